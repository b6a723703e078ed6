"""A pretend CUDA device for CPU-only machines: catches code that would mix devices on a real GPU.

This is a mock, used because no GPU is here: tensors stay on the CPU, but each one carries the device it would
be on (by its storage), ``tensor.device`` reports it, and ``.to("cuda")``, ``.cuda()``, ``.cpu()`` and factory
functions' ``device=`` move the tag. Inside :class:`FakeCuda` every torch call is checked for what a GPU would
refuse:

* non-scalar tensors of both devices in one op ("Expected all tensors to be on the same device");
* a CUDA index into a CPU tensor;
* ``.numpy()`` of a CUDA tensor;
* a CPU ``torch.Generator`` drawing a CUDA tensor.

It also lists, in ``syncs``, the calls that would make the host wait for the device: a CUDA tensor's value read
on the host (``item``, ``tolist``, ``bool()``, ``.cpu()``...), and the ops whose output size depends on the data
(``nonzero``, ``unique``, ``masked_select``, indexing with a boolean mask, ``repeat_interleave`` by a tensor).

It is a heuristic (it sees torch calls, not the autograd engine's own kernels; a gradient read through ``.grad``
gets its tensor's device), so it can miss a mismatch, but what it reports is one.
"""

from __future__ import annotations

import traceback
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

CUDA = torch.device("cuda")
RANDOM = {"rand", "randn", "randint", "randperm", "multinomial", "normal", "bernoulli", "uniform_", "normal_",
          "random_", "exponential_", "rand_like", "randn_like", "randint_like"}
IN_PLACE_RANDOM = {"multinomial", "uniform_", "normal_", "random_", "exponential_", "bernoulli"}
NO_CHECK = {"copy_", "__set__", "set_", "swap_tensors", "_has_compatible_shallow_copy_type"}
INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_"}
TO_HOST = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"}
DATA_SIZED = {"nonzero", "argwhere", "unique", "unique_consecutive", "masked_select"}


def _tensors(x: Any, out: list[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            _tensors(y, out)
    elif isinstance(x, dict):
        for y in x.values():
            _tensors(y, out)
    return out


def _wants_cuda(d: Any) -> bool | None:
    """True / False for a CUDA / CPU device spec, None for anything else."""
    if isinstance(d, str):
        return d.startswith("cuda")
    if isinstance(d, torch.device):
        return d.type == "cuda"
    return None


class FakeCuda(TorchFunctionMode):
    """``with FakeCuda() as fake:`` run code with ``device="cuda"``; ``fake.problems`` lists what a GPU would
    refuse, each with the repository lines that led to it."""

    def __init__(self, repo_root: str) -> None:
        super().__init__()
        self.root = repo_root
        self.tags: dict[int, str] = {}
        self.problems: list[str] = []
        self.syncs: list[str] = []
        """``"<op> at <file>:<line>"`` of each call that would wait for the device, innermost repository line."""
        self._patched: dict[str, Any] = {}

    # tags ----------------------------------------------------------------------------------------------------
    def tag(self, t: torch.Tensor) -> str | None:
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            return None
        return self.tags.get(ptr, "cpu") if ptr else None

    def set_tag(self, x: Any, device: str) -> None:
        for t in _tensors(x, []):
            try:
                ptr = t.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):
                continue
            if ptr:
                self.tags[ptr] = device

    def _repo_frames(self) -> list[traceback.FrameSummary]:
        return [f for f in traceback.extract_stack()[:-3] if f.filename.startswith(self.root)
                and "/.venv/" not in f.filename and not f.filename.endswith("fake_cuda.py")]

    def _problem(self, what: str) -> None:
        lines = [f"{f.filename.removeprefix(self.root)}:{f.lineno} {f.line}" for f in self._repo_frames()]
        entry = f"{what}\n    " + "\n    ".join(lines[-4:])
        if entry not in self.problems:
            self.problems.append(entry)

    def _sync(self, name: str, this: torch.Tensor, args: tuple, kwargs: dict) -> None:
        """Record ``name`` if, on a GPU, it would make the host wait for the device."""
        if self.tag(this) != "cuda":
            return
        waits = name in TO_HOST or name in DATA_SIZED or name == "cpu"
        if name == "to":
            waits = any(_wants_cuda(a) is False for a in (*args[1:], kwargs.get("device")))
        elif name == "repeat_interleave":
            waits = isinstance(args[1] if len(args) > 1 else kwargs.get("repeats"), torch.Tensor)
        elif name in INDEXING:
            index = args[1] if len(args) > 1 else None
            waits = any(t.dtype == torch.bool and t.dim() > 0 for t in _tensors(index, []))
        if waits:
            frames = self._repo_frames()
            where = f"{frames[-1].filename.removeprefix(self.root)}:{frames[-1].lineno}" if frames else "?"
            self.syncs.append(f"{name} at {where}")

    # torch outside the mode: arrays and files come in on the CPU ----------------------------------------------
    def __enter__(self) -> FakeCuda:
        for name in ("from_numpy", "load"):
            fn = getattr(torch, name)
            self._patched[name] = fn

            def wrapped(*a: Any, _fn: Any = fn, **k: Any) -> Any:
                out = _fn(*a, **k)
                self.set_tag(out, "cpu")
                return out

            setattr(torch, name, wrapped)
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        for name, fn in self._patched.items():
            setattr(torch, name, fn)

    # every torch call -----------------------------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", str(func))
        this = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name == "__get__":  # tensor properties
            prop = getattr(getattr(func, "__self__", None), "__name__", "")
            out = func(*args, **kwargs)
            if this is not None and prop == "device" and self.tag(this) == "cuda":
                return CUDA
            if this is not None and prop == "is_cuda":
                return self.tag(this) == "cuda"
            if this is not None and prop == "grad" and isinstance(out, torch.Tensor):
                self.set_tag(out, self.tag(this) or "cpu")  # made by the autograd engine, unseen: the tensor's
            return out
        if this is not None:
            self._sync(name, this, args, kwargs)
        if name in ("numpy", "__array__") and this is not None and self.tag(this) == "cuda":
            self._problem(f"{name}() of a cuda tensor (needs .cpu() first)")
        target = None
        if "device" in kwargs and (c := _wants_cuda(kwargs["device"])) is not None:
            target = "cuda" if c else "cpu"
            kwargs["device"] = "cpu"
        gen = kwargs.get("generator")
        if name in RANDOM and gen is not None and gen.device.type == "cpu":
            drawn = target or (self.tag(this) if this is not None and name in IN_PLACE_RANDOM else None)
            if drawn == "cuda":
                self._problem(f"{name} with a CPU generator on a cuda tensor")
        if name in ("to", "cuda", "cpu") and this is not None:
            return self._move(func, name, this, args, kwargs, target)

        devices: set[str] = set()
        if name in INDEXING and this is not None:
            base = self.tag(this)
            index, values = _tensors(args[1:2], []), _tensors(args[2:], [])
            if name == "__getitem__":
                index, values = _tensors(args[1:], []), []
            if base == "cpu" and any(self.tag(i) == "cuda" for i in index):
                self._problem(f"{name}: a cuda index into a cpu tensor")
            for v in values:
                if v.dim() > 0 and self.tag(v) not in (None, base):
                    self._problem(f"{name}: a {self.tag(v)} value into a {base} tensor")
            devices = {base} if base else set()
        elif name not in NO_CHECK:
            seen = [(t, self.tag(t)) for t in _tensors(args, []) + _tensors(kwargs, [])]
            devices = {d for t, d in seen if d is not None and not (d == "cpu" and t.dim() == 0)}
            if len(devices) > 1:
                shapes = ", ".join(f"{tuple(t.shape)}@{d}" for t, d in seen[:6])
                self._problem(f"{name} mixes devices: {shapes}")
        out = func(*args, **kwargs)
        if name in TO_HOST or (isinstance(out, torch.Tensor) and out is this):
            return out
        if target is not None:
            dest = target
        elif name == "__getitem__" and this is not None:
            dest = self.tag(this) or "cpu"
        elif devices:
            dest = "cuda" if "cuda" in devices else "cpu"
        else:
            dest = (self.tag(this) if this is not None else None) or "cpu"
        self.set_tag(out, dest)
        return out

    def _move(self, func: Any, name: str, this: torch.Tensor, args: tuple, kwargs: dict, target: str | None) -> Any:
        dest = target
        if name == "cuda":
            dest = "cuda"
        elif name == "cpu":
            dest = "cpu"
        else:
            for a in args[1:]:
                if isinstance(a, torch.Tensor):
                    dest = self.tag(a)
                    break
                if (c := _wants_cuda(a)) is not None:
                    dest = "cuda" if c else "cpu"
                    break
        rest = ["cpu" if _wants_cuda(a) else a for a in args[1:]]
        out = this.clone() if name == "cuda" else func(this, *rest, **kwargs) if name == "to" else func(this)
        src = self.tag(this)
        if dest is not None and dest != src:
            if out is this or self._same_storage(out, this):
                out = out.clone()  # a real move makes a new tensor
            self.set_tag(out, dest)
        elif not self._same_storage(out, this):
            self.set_tag(out, dest or src or "cpu")
        return out

    @staticmethod
    def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
