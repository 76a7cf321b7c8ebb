"""``galton tasks``: the benchmark tasks, one line each."""

from __future__ import annotations

import jax


def add_command(subparsers) -> None:
    subparsers.add_parser("tasks", help="list the benchmark tasks").set_defaults(handler=run)


def run(args) -> int:
    from galton import tasks
    from galton.problem import Program

    print(f"{'task':26s} {'kind':9s} {'θ dim':>5s} {'x dim':>6s}  reference  parameters")
    for name in tasks.names():
        task = tasks.get(name)
        problem = task.problem
        x_dim = jax.eval_shape(problem.simulate_flat, jax.random.key(0), jax.numpy.zeros(problem.prior.dim)).shape
        kind = "program" if isinstance(problem, Program) else "simulator"
        ref = "yes" if task.reference is not None else "-"
        names = ", ".join(task.names[:5]) + (", ..." if len(task.names) > 5 else "")
        print(f"{name:26s} {kind:9s} {problem.prior.dim:5d} {str(x_dim[0] if x_dim else 1):>6s}  {ref:9s}  {names}")
    return 0
