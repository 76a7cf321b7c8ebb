"""A persistent XLA compilation cache, and galton's own store of compiled programs, on by default.

Compiling a flow's training epoch takes seconds, longer than training it on 10k
simulations; with the cache a second run of the same configuration, in any later process,
skips compilation. A cache directory the user set for JAX is left alone; set
``GALTON_COMPILE_CACHE=0`` to turn galton's off (both), or ``GALTON_CACHE_DIR`` to move it.
The store (`stored_program`, `built`) keeps the programs training runs, found without tracing.
Both live in one folder, held to ``GALTON_CACHE_MAX_MB`` (2048 by default): whenever galton
stores a program, the files used least recently go until the folder fits.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import inspect
import os
import pickle
import platform
import re
import sys
import tempfile
import types
from pathlib import Path

import equinox as eqx
import jax
import numpy as np


def _cache_root() -> Path | None:
    """galton's cache folder (``GALTON_CACHE_DIR``), or None when ``GALTON_COMPILE_CACHE=0``."""
    if os.environ.get("GALTON_COMPILE_CACHE", "1") == "0":
        return None
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "galton" / "jax"
    return Path(os.environ.get("GALTON_CACHE_DIR", default))


def enable_compile_cache() -> None:
    path = _cache_root()
    if path is None:
        return
    _max_bytes()  # a bad GALTON_CACHE_MAX_MB is told at import, not after a first compile
    if jax.config.jax_compilation_cache_dir:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    # the many small programs of eager model construction add up to seconds: cache them all
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# Compiled programs kept by galton itself, found without tracing. JAX's cache above keys a
# program on its lowered form, so even a program it holds costs a fresh process its tracing and
# lowering (RASCAL's 50-epoch fit on 3,000 pairs: 0.36 s of 0.97 s). This store keys a program on
# what it is built from, described without running it; it only vouches for code whose source is
# in the key: galton's own (hashed) and the pinned versions of the packages below. A program that
# holds anything else (a user's loss or network) is never stored.
_KNOWN = frozenset({"builtins", "galton", "jax", "jaxlib", "equinox", "optax", "paramax", "flowjax", "numpyro"})
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")
try:  # how jax.flatten_util (and the flows that use it) rebuild a ravelled PyTree
    from jax._src.util import HashablePartial
except ImportError:  # another jax: such parts are then unknown
    class HashablePartial:
        pass


class _Unknown(Exception):
    """Part of a program whose code the store cannot put into its key."""


def program_dir() -> Path | None:
    """Where galton keeps compiled programs, or None when its cache is off (``GALTON_COMPILE_CACHE=0``)."""
    root = _cache_root()
    return None if root is None else root / "galton-programs"


@functools.cache
def source_as_imported() -> str:
    """galton's source as imported (hashed when `galton` is: an edit after that is not what runs)
    and the versions and machine everything else comes from."""
    root = Path(__file__).resolve().parent
    source = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        source.update(str(path.relative_to(root)).encode() + path.read_bytes())
    versions = {name: _version(name) for name in sorted(_KNOWN - {"builtins", "galton"})}
    cpu = ""
    if Path("/proc/cpuinfo").exists():  # a cache shared by machines must not hand one's code to another
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return repr((source.hexdigest(), versions, sys.version, platform.machine(), cpu))


def _environment() -> str:
    """Everything outside a program's inputs that shapes what it compiles to, read on every call:
    JAX's flags can change between two programs (x64, matmul precision, optimisation level)."""
    from jax._src import config

    from galton.nets import ACTIVATIONS  # looked up by name while tracing: a user may add to it

    device = jax.devices()[0]
    flags = [getattr(jax.config, name, None) for name in ("jax_optimization_level", "jax_memory_fitting_level", "jax_memory_fitting_effort")]
    return repr((source_as_imported(), device.platform, device.device_kind, device.client.platform_version, os.environ.get("XLA_FLAGS", ""),
                 _ADDRESS.sub("", repr(config.trace_context())), repr(flags), _value(ACTIVATIONS)))


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _name(obj) -> str:
    module, qualname = getattr(obj, "__module__", None) or "", getattr(obj, "__qualname__", "")
    if module.split(".")[0] not in _KNOWN or not qualname:
        raise _Unknown(obj)
    if not isinstance(obj, types.FunctionType):
        if "<" in qualname:
            raise _Unknown(obj)
        return f"{module}.{qualname}"
    # lambdas and inner functions share names: the line tells them apart, and what they close over goes in too
    cells = tuple(c.cell_contents for c in obj.__closure__ or ())
    return f"{module}.{qualname}@{obj.__code__.co_firstlineno}{_value((cells, obj.__defaults__, obj.__kwdefaults__))}"


def _value(v) -> str:
    """A process-independent text for a constant: a node's auxiliary data, a leaf that is not
    an input, what a function closes over (arrays by their contents: they are compiled in)."""
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes)):
        return repr(v)
    if isinstance(v, (np.ndarray, np.generic, jax.Array)):
        if isinstance(v, jax.core.Tracer) or jax.dtypes.issubdtype(v.dtype, jax.dtypes.extended):  # a key: its bits would do, but none is expected here
            raise _Unknown(v)
        a = np.asarray(v)
        return f"array({a.shape}, {a.dtype}, {hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()})"
    if isinstance(v, types.MethodType):
        return f"method({_name(v.__func__)}, {_value(v.__self__)})"
    if isinstance(v, (tuple, list)):
        return f"{type(v).__name__}({', '.join(map(_value, v))})"
    if isinstance(v, dict):
        return f"dict({', '.join(f'{_value(k)}: {_value(x)}' for k, x in v.items())})"
    if isinstance(v, (type, types.FunctionType, types.BuiltinFunctionType)) or callable(v) and hasattr(v, "__qualname__"):
        return _name(v)
    if isinstance(v, jax.tree_util.PyTreeDef):
        return _structure(v)
    if isinstance(v, np.dtype):
        return str(v)
    if isinstance(v, functools.partial):
        return f"partial({_value((v.func, v.args, v.keywords))})"
    if isinstance(v, HashablePartial):
        return f"partial({_value((v.f, v.args, v.kwargs))})"
    if isinstance(v, enum.Enum):
        return f"{_name(type(v))}.{v.name}"
    if dataclasses.is_dataclass(v) and not isinstance(v, type) and not isinstance(v, eqx.Module):  # settings
        return f"{_name(type(v))}({', '.join(f'{f.name}={_value(getattr(v, f.name))}' for f in dataclasses.fields(v))})"
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(v)):
        if getattr(v, "__dict__", None) == {} and not getattr(type(v), "__slots__", None):  # a sentinel (equinox's Missing)
            return f"{_name(type(v))}()"
        raise _Unknown(v)  # an object whose state its repr may hide (a prior, a distribution)
    return f"({describe(v, inputs=False)})"  # a module: its structure and every leaf


def _structure(treedef) -> str:
    data = treedef.node_data()
    if data is None:
        return "*"
    kind, aux = data
    return f"{_name(kind)}[{_value(aux)}]({', '.join(_structure(c) for c in treedef.children())})"


def describe(tree, *, inputs: bool = True) -> str:
    """A text that names ``tree``'s structure and leaves, the same in every process: its arrays
    by shape and dtype when they are a program's ``inputs``, by their contents when they are
    constants; raises `_Unknown` for parts whose code is not vouched for."""
    leaves, treedef = jax.tree.flatten(tree)
    parts = [f"{a.shape}{a.dtype}{getattr(a, 'weak_type', False)}" if inputs and isinstance(a, (np.ndarray, np.generic, jax.Array))
             else _value(a) for a in leaves]
    return f"{_structure(treedef)}|{';'.join(parts)}"


_LOADED: collections.OrderedDict = collections.OrderedDict()


def stored_program(function, args: tuple, *, identity, out_structure):
    """``function(*args)`` compiled, or None when the store is off or cannot vouch for it.

    ``function`` is a pure function of the PyTrees ``args``; ``identity`` holds everything else
    it closes over (settings, a model's non-array parts); ``out_structure`` is the treedef of its
    output. Returns ``run(*args) -> output`` for any ``args`` of the same structure, shapes and
    dtypes. A fresh process loads a program another compiled instead of tracing and lowering it.
    """
    folder = program_dir()
    if folder is None:
        return None
    in_tree = jax.tree.structure(args)
    try:
        code = inspect.unwrap(function).__code__  # which program: what it closes over is in identity
        text = f"{_environment()}\n{code.co_filename}:{code.co_firstlineno}\n{describe(identity, inputs=False)}\n{describe(args)}"
    except (_Unknown, AttributeError, ValueError, RecursionError):  # an empty or self-referring closure cell, no code
        return None
    key = hashlib.sha256(text.encode()).hexdigest()[:40]
    path = folder / f"{key}.bin"

    def run(*args):
        leaves = jax.tree.leaves(args)
        compiled, checked = _LOADED.pop(key, None) or (_load(path, text), False)
        out = None
        if compiled is not None:
            try:
                out = compiled(*leaves)
                if not checked:  # a loaded program proves whole on its first run, or is compiled anew
                    jax.block_until_ready(out)
            except jax.errors.JaxRuntimeError:
                if checked:
                    raise
                out = None
        if out is None:
            compiled = _compile(function, in_tree, leaves, out_structure, path, text)
            out = compiled(*leaves)
        _LOADED[key] = (compiled, True)  # the most recent last; the least recent goes past 32
        if len(_LOADED) > 32:
            _LOADED.popitem(last=False)
        return jax.tree.unflatten(out_structure, out)

    return run


def _load(path: Path, text: str):
    from jax.experimental import serialize_executable

    try:
        stored_text, payload, in_tree, out_tree = pickle.loads(path.read_bytes())
        if stored_text != text:  # a hash collision: never run another program
            return None
        compiled = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
        os.utime(path)  # recently used: `prune` keeps it
        return compiled
    except Exception:  # none yet, or a torn or foreign file: compile afresh and overwrite it
        return None


def _compile(function, in_tree, leaves, out_structure, path: Path, text: str):
    from jax.experimental import serialize_executable

    def flat(*leaves):
        out = function(*jax.tree.unflatten(in_tree, leaves))
        if jax.tree.structure(out) != out_structure:
            raise TypeError(f"the program returned {jax.tree.structure(out)}, expected {out_structure}")
        return tuple(jax.tree.leaves(out))

    # An executable JAX read from its own cache serialises incomplete on CPU (jaxlib 0.10.2: a later
    # process then fails with "Function ... not found"), so JAX's cache never gets these programs
    # to hand back: each is compiled here in full, once.
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        compiled = jax.jit(flat).lower(*leaves).compile()
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)
    temporary = None
    try:
        payload, in_flat, out_flat = serialize_executable.serialize(compiled)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as f:
            temporary = f.name
            f.write(pickle.dumps((text, payload, in_flat, out_flat)))
        os.replace(temporary, path)  # whole or absent: a reader in another process never sees half
    except Exception:  # a read-only cache, a full disk, a program XLA cannot serialise: it still runs
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
    root = _cache_root()
    if root is not None:
        prune(root, _max_bytes())
    return compiled


def _max_bytes() -> int:
    text = os.environ.get("GALTON_CACHE_MAX_MB", "2048")
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = -1.0
    if not 0 <= megabytes < float("inf"):
        raise ValueError(f"GALTON_CACHE_MAX_MB must be a number of megabytes (at least 0), got {text!r}")
    return int(megabytes * 2**20)


def prune(folder: Path, max_bytes: int) -> int:
    """Delete the files under ``folder`` used least recently (by modification time: a loaded
    program is touched) until the rest take at most ``max_bytes``; returns the bytes freed."""
    files = []
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent) / name
            try:
                stat = path.stat()
            except OSError:  # deleted meanwhile by another process
                continue
            files.append((stat.st_mtime, stat.st_size, path))
    excess = sum(size for _, size, _ in files) - max_bytes
    freed = 0
    for _, size, path in sorted(files, key=lambda f: f[0]):
        if freed >= excess:
            break
        try:
            path.unlink()
            freed += size
        except OSError:  # another process pruned it first, or a read-only cache
            pass
    return freed


def built(builder, key: jax.Array):
    """``builder(key)``, an equinox module built from a ``jax.random`` key, its arrays made by one
    stored program (see `stored_program`; ``builder`` and what it closes over are its identity),
    or None when the store is off or cannot vouch for ``builder``."""
    if program_dir() is None:
        return None
    shapes = eqx.filter_eval_shape(builder, key)
    arrays, rest = eqx.partition(shapes, lambda leaf: isinstance(leaf, jax.ShapeDtypeStruct))
    try:  # a module whose other parts close over its arrays (flowjax's flows) must be built for real
        describe(rest, inputs=False)
    except (_Unknown, ValueError, RecursionError):
        return None
    stored = stored_program(lambda k: eqx.filter(builder(k), eqx.is_array), (key,), identity=builder,
                            out_structure=jax.tree.structure(arrays))
    return None if stored is None else eqx.combine(stored(key), rest)
