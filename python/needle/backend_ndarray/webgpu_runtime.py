"""The host side of needle's WebGPU backend: an adapter, buffers, pipelines and one command
stream, through wgpu (wgpu-py, ``pip install "needle[webgpu]"``).

What a GPU rewards, and what this module does:

- **Pipelines compiled once**: a kernel is a WGSL source (built by ``ndarray_backend_webgpu``)
  compiled on first use and cached by name, with one explicit layout per number of arrays.
- **A buffer pool**: freed buffers go back to a free list of their size class (powers of two
  and 1.5 times them, from 256 bytes) and are handed out again, so a training step allocates
  nothing in steady state. When an allocation fails, the cached buffers are released and it
  is tried once more before a MemoryError.
- **One command stream**: dispatches are recorded into one open compute pass and submitted
  at sync points only: a readback, ``synchronize()``, a host write into a buffer that a
  recorded dispatch uses, or a full uniform ring. ``stats()`` counts submissions and
  dispatches.
- **Uniforms through a ring**: each dispatch's parameters are appended to a host copy of a
  uniform buffer and bound at a dynamic offset; the ring is written with one
  ``write_buffer`` per submission.

Errors from wgpu become Python exceptions that name the kernel (MemoryError for out of memory,
RuntimeError otherwise). Importing this module raises ImportError, with the reason, when wgpu
is not installed or no adapter is found; ``NEEDLE_WEBGPU_ADAPTER`` picks an adapter by a
substring of its name.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

try:
    import wgpu
except ImportError as _error:
    raise ImportError(
        f"needle's webgpu backend needs wgpu ({_error}); install it with "
        'pip install "needle[webgpu]"'
    ) from _error

# Dispatches recorded before a submission is forced (the uniform ring's slots): enough for
# several training steps of the example models (a 2-block MLP-ResNet step records 209).
RING_SLOTS = 4096
SLOT_BYTES = 256  # the largest parameter struct (strided.wgsl: 152 bytes), rounded up
# Features used when the adapter has them: 64-bit integers (the int64 dtype), subgroups
# (reductions), f16 (the float16 dtype: without it the device does not hold float16).
OPTIONAL_FEATURES = ("shader-int64", "subgroup", "shader-f16")
_USAGE = wgpu.BufferUsage
# wgpu waits for the driver's device without a limit. On an NVIDIA H200's Vulkan driver, 12
# test processes were each still inside that request after 120 s; lavapipe answers in ~0.1 s.
# Past this, the backend is off with the reason instead of hanging `ndl.webgpu().enabled()`.
DEVICE_REQUEST_TIMEOUT_S = 60.0


def _adapter_name(adapter) -> str:
    info = adapter.info
    return f"{info['device']} ({info['backend_type']}, {info['adapter_type']})"


def select_adapter():
    """The adapter to use: the first whose name contains NEEDLE_WEBGPU_ADAPTER (any case),
    else wgpu's high-performance choice. ImportError, with what was found, when none fits."""
    wanted = os.environ.get("NEEDLE_WEBGPU_ADAPTER", "").strip()
    if not wanted:
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        if adapter is None:
            raise ImportError("needle's webgpu backend: wgpu found no adapter (no GPU driver)")
        return adapter
    adapters = wgpu.gpu.enumerate_adapters_sync()
    for adapter in adapters:
        info = adapter.info
        # The name needle shows (capabilities(), this error) and the driver's own fields.
        names = [_adapter_name(adapter)] + [str(info.get(k, "")) for k in ("description", "vendor")]
        if any(wanted.lower() in name.lower() for name in names):
            return adapter
    found = "; ".join(_adapter_name(a) for a in adapters) or "none"
    raise ImportError(f"NEEDLE_WEBGPU_ADAPTER={wanted!r} matches no adapter (found: {found})")


def _request_device(adapter, name: str, **descriptor):
    """adapter.request_device_sync(**descriptor), given DEVICE_REQUEST_TIMEOUT_S to answer on
    a thread of its own (left behind if the driver never answers). ImportError, naming the
    adapter, when the driver refuses the device or does not answer in time."""
    answer: dict[str, Any] = {}

    def request() -> None:
        try:
            answer["device"] = adapter.request_device_sync(**descriptor)
        except Exception as error:  # a driver that refuses the device: the backend is off
            answer["error"] = error

    thread = threading.Thread(target=request, name="needle-webgpu-device-request", daemon=True)
    thread.start()
    thread.join(DEVICE_REQUEST_TIMEOUT_S)
    if thread.is_alive():
        raise ImportError(
            f"needle's webgpu backend: {name}: the driver created no device in "
            f"{DEVICE_REQUEST_TIMEOUT_S:g} s (wgpu's device request has not returned); "
            "NEEDLE_WEBGPU_ADAPTER picks another adapter"
        )
    error = answer.get("error")
    if error is not None:
        raise ImportError(f"needle's webgpu backend: {name}: {error}") from error
    return answer["device"]


def size_class(nbytes: int) -> int:
    """The bytes a buffer of `nbytes` is allocated with: 256 or more, 2^k or 1.5 * 2^k."""
    size = 256
    while size < nbytes:
        if size * 3 // 2 >= nbytes:
            return size * 3 // 2
        size *= 2
    return size


class Block:
    """A pooled GPU buffer and the batch of the last dispatch that used it."""

    __slots__ = ("buffer", "nbytes", "last_batch", "key")

    def __init__(self, buffer, nbytes: int, key: int):
        self.buffer, self.nbytes, self.last_batch, self.key = buffer, nbytes, -1, key


class WebGPURuntime:
    """The device, the pools, the pipelines and the open command stream."""

    def __init__(self, adapter=None, features: Sequence[str] = OPTIONAL_FEATURES) -> None:
        """A device on `adapter` (default: select_adapter()), with those of `features` the
        adapter has (tests leave some out to run the paths of adapters without them)."""
        adapter = adapter or select_adapter()
        self.adapter_name = _adapter_name(adapter)
        self.features = frozenset(f for f in features if f in adapter.features)
        limits = adapter.limits
        self.max_buffer_bytes = min(
            limits["max-buffer-size"], limits["max-storage-buffer-binding-size"]
        )
        self.max_groups = limits["max-compute-workgroups-per-dimension"]
        self.device = _request_device(
            adapter,
            self.adapter_name,
            required_features=sorted(self.features),
            required_limits={
                "max-buffer-size": limits["max-buffer-size"],
                "max-storage-buffer-binding-size": limits["max-storage-buffer-binding-size"],
            },
        )
        self.queue = self.device.queue
        alignment = limits["min-uniform-buffer-offset-alignment"]
        self.slot = -(-SLOT_BYTES // alignment) * alignment
        self.ring = self.device.create_buffer(
            size=self.slot * RING_SLOTS, usage=_USAGE.UNIFORM | _USAGE.COPY_DST
        )
        self._ring_host = bytearray(self.slot * RING_SLOTS)
        self._ring_used = 0
        self._layouts: dict[
            int, tuple[Any, Any]
        ] = {}  # arrays -> (bind group layout, pipeline layout)
        self._pipelines: dict[str, Any] = {}
        self._bind_groups: dict[tuple, Any] = {}
        self._free: dict[int, list[Block]] = {}  # size class -> free blocks
        self._buffers: dict[int, Any] = {}  # every block's buffer, by key
        self._staging: dict[int, Any] = {}  # size class -> a MAP_READ buffer
        self._keys = 0
        self._encoder: Any = None
        self._pass: Any = None
        self._fence: Block | None = None
        self._batch_kernels: list[str] = []
        self.batch = 0  # the open batch: dispatches recorded since the last submission
        self.counters = dict(submissions=0, dispatches=0, allocations=0, pipelines=0)
        self.live_bytes = self.cached_bytes = self.peak_bytes = 0
        self.live_buffers = 0

    # ---- memory ---------------------------------------------------------------------------
    def allocate(self, nbytes: int, what: str, idle: bool = False) -> Block:
        """A block of at least `nbytes` bytes, from the pool when one of its class is free
        (with `idle`, only one that no recorded dispatch uses)."""
        size = size_class(nbytes)
        if size > self.max_buffer_bytes:
            raise MemoryError(
                f"webgpu: {what} needs {nbytes} bytes, more than this adapter's largest "
                f"buffer ({self.max_buffer_bytes} bytes, {self.adapter_name})"
            )
        free = self._free.get(size, [])
        found = next(
            (i for i in range(len(free) - 1, -1, -1) if not (idle and self.busy(free[i]))), None
        )
        if found is not None:
            block = free.pop(found)
            self.cached_bytes -= size
        else:
            block = Block(self._create_buffer(size, what), size, self._next_key())
            # The runtime holds every buffer too: an Array in a reference cycle (a traceback's
            # frame) is collected with its block, and the cycle collector would otherwise
            # release the buffer before the Array's __del__ gives the block back to the pool.
            self._buffers[block.key] = block.buffer
            self.counters["allocations"] += 1
        self.live_bytes += size
        self.live_buffers += 1
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return block

    def _next_key(self) -> int:
        self._keys += 1
        return self._keys

    def _create_buffer(self, size: int, what: str):
        usage = _USAGE.STORAGE | _USAGE.COPY_SRC | _USAGE.COPY_DST
        for attempt in range(2):
            try:
                return self.device.create_buffer(size=size, usage=usage)
            except wgpu.GPUError as error:
                if not _out_of_memory(error):  # a lost device, say: not a memory problem
                    raise self._named(what, error) from error
                if attempt == 0 and self.cached_bytes:
                    self.empty_cache()  # pool pressure: give the cached buffers back, retry
                    continue
                raise MemoryError(
                    f"webgpu: {what}: cannot allocate {size} bytes on {self.adapter_name} "
                    f"({self.live_bytes} bytes in use): {error}"
                ) from error
        raise AssertionError("unreachable")

    def release(self, block: Block) -> None:
        """Give a block back to the pool (its Array is gone). Dispatches recorded with it still
        run first: a later dispatch that gets the block is recorded after them."""
        self.live_bytes -= block.nbytes
        self.live_buffers -= 1
        self.cached_bytes += block.nbytes
        self._free.setdefault(block.nbytes, []).append(block)

    def empty_cache(self) -> None:
        """Destroy the pool's free buffers (after the recorded work that may use them)."""
        self.flush()
        for blocks in self._free.values():
            for block in blocks:
                block.buffer.destroy()
                del self._buffers[block.key]
        self._free.clear()
        self._bind_groups.clear()
        self.cached_bytes = 0

    def memory_stats(self) -> dict[str, int]:
        """Bytes and buffers in use by arrays, cached in the pool, and the peak in use."""
        cached = sum(len(b) for b in self._free.values())
        return dict(
            live_bytes=self.live_bytes,
            live_buffers=self.live_buffers,
            cached_bytes=self.cached_bytes,
            cached_buffers=cached,
            peak_bytes=self.peak_bytes,
        )

    def busy(self, block: Block) -> bool:
        """Whether a dispatch recorded but not yet submitted uses `block`."""
        return block.last_batch == self.batch and self._encoder is not None

    def write(self, block: Block, data, what: str) -> None:
        """Host data into a block. Queue writes land before the next submission's commands, so
        dispatches already recorded with this block are submitted first (a caller that
        replaces a whole array gives it an idle block instead: ndarray_backend_webgpu)."""
        if self.busy(block):
            self.flush()
        self._guard(what, lambda: self.queue.write_buffer(block.buffer, 0, data))

    def read(self, block: Block, byte_offset: int, nbytes: int, what: str) -> memoryview:
        """`nbytes` bytes of a block from `byte_offset` (both multiples of 4): submits what is
        recorded, copies into a mappable staging buffer and waits for it."""
        size = size_class(nbytes)
        staging = self._staging.get(size)
        if staging is None:
            staging = self.device.create_buffer(size=size, usage=_USAGE.MAP_READ | _USAGE.COPY_DST)
            self._staging[size] = staging
        self._end_pass()
        encoder = self._encoder or self.device.create_command_encoder()
        encoder.copy_buffer_to_buffer(block.buffer, byte_offset, staging, 0, nbytes)
        self._encoder = encoder
        self.flush()

        def mapped():
            staging.map_sync(wgpu.MapMode.READ, 0, size)
            try:
                return staging.read_mapped(0, nbytes, copy=True)
            finally:
                staging.unmap()

        return self._guard(what, mapped)

    # ---- kernels --------------------------------------------------------------------------
    def _layout(self, arrays: int):
        if arrays not in self._layouts:
            compute = wgpu.ShaderStage.COMPUTE
            entries = [
                dict(
                    binding=0,
                    visibility=compute,
                    buffer=dict(type=wgpu.BufferBindingType.uniform, has_dynamic_offset=True),
                )
            ] + [
                dict(binding=i, visibility=compute, buffer=dict(type="storage"))
                for i in range(1, arrays + 1)
            ]
            group_layout = self.device.create_bind_group_layout(entries=entries)
            self._layouts[arrays] = (
                group_layout,
                self.device.create_pipeline_layout(bind_group_layouts=[group_layout]),
            )
        return self._layouts[arrays]

    def pipeline(self, kernel: str, arrays: int, source: Callable[[], str]):
        """The compiled pipeline of `kernel` (compiled from source() on first use)."""
        found = self._pipelines.get(kernel)
        if found is None:
            code = source()

            def compile_():
                module = self.device.create_shader_module(label=kernel, code=code)
                return self.device.create_compute_pipeline(
                    label=kernel,
                    layout=self._layout(arrays)[1],
                    compute=dict(module=module, entry_point="main"),
                )

            found = self._pipelines[kernel] = self._guard(kernel, compile_)
            self.counters["pipelines"] += 1
        return found

    def dispatch(
        self,
        kernel: str,
        blocks: Sequence[Block],
        params: bytes,
        groups: tuple[int, int, int],
        source: Callable[[], str],
    ) -> None:
        """Record one dispatch of `kernel` over `blocks` (bindings 1..), its parameters at
        binding 0, into the open compute pass."""
        pipeline = self.pipeline(kernel, len(blocks), source)
        if self._ring_used + self.slot > len(self._ring_host):
            self.flush()
        offset = self._ring_used
        self._ring_host[offset : offset + len(params)] = params
        self._ring_used += self.slot
        key = tuple(b.key for b in blocks)
        bind_group = self._bind_groups.get(key)
        if bind_group is None:
            if len(self._bind_groups) > 8192:
                self._bind_groups.clear()
            entries = [dict(binding=0, resource=dict(buffer=self.ring, offset=0, size=self.slot))]
            entries += [
                dict(binding=i, resource=dict(buffer=b.buffer, offset=0, size=b.nbytes))
                for i, b in enumerate(blocks, 1)
            ]
            bind_group = self._bind_groups[key] = self.device.create_bind_group(
                layout=self._layout(len(blocks))[0], entries=entries
            )
        try:
            if self._pass is None:
                self._encoder = self._encoder or self.device.create_command_encoder()
                self._pass = self._encoder.begin_compute_pass()
            compute_pass = self._pass
            compute_pass.set_pipeline(pipeline)
            compute_pass.set_bind_group(0, bind_group, [offset])
            compute_pass.dispatch_workgroups(*groups)
        except wgpu.GPUError as error:  # a lost device, a validation error: name the kernel
            raise self._named(kernel, error) from error
        for block in blocks:
            block.last_batch = self.batch
        self._batch_kernels.append(kernel)
        self.counters["dispatches"] += 1

    def grid(self, groups: int) -> tuple[int, int, int]:
        """`groups` workgroups as an (x, y, 1) grid within the per-dimension limit (the
        kernels' flat_index folds y back in; spare workgroups are masked by size)."""
        groups = max(1, groups)
        x = min(groups, self.max_groups)
        return (x, -(-groups // x), 1)

    # ---- submission -----------------------------------------------------------------------
    def _end_pass(self) -> None:
        if self._pass is not None:
            self._pass.end()
            self._pass = None

    def flush(self) -> None:
        """Submit everything recorded (one submission), without waiting for it."""
        self._end_pass()
        if self._encoder is None:
            return
        encoder, self._encoder = self._encoder, None
        kernels, self._batch_kernels = self._batch_kernels, []
        used, self._ring_used = self._ring_used, 0
        what = ", ".join(dict.fromkeys(kernels[-4:])) or "a copy"

        def submit():
            if used:
                self.queue.write_buffer(self.ring, 0, self._ring_host, 0, used)
            self.queue.submit([encoder.finish()])

        self.batch += 1
        self.counters["submissions"] += 1
        self._guard(f"a submission ending with {what}", submit)

    def synchronize(self) -> None:
        """Submit what is recorded and wait until the GPU has run it."""
        if self._fence is None:
            self._fence = self.allocate(4, "synchronize")
        # Mapping a buffer waits for every earlier submission: a 4-byte readback is the wait
        # (wgpu-py 0.32's on_submitted_work_done_sync fails on its own callback type).
        self.read(self._fence, 0, 4, "synchronize")

    def _guard(self, what: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except wgpu.GPUError as error:
            raise self._named(what, error) from error

    def _named(self, what: str, error: BaseException) -> Exception:
        """A wgpu error as the Python exception that names what failed."""
        if _out_of_memory(error):
            return MemoryError(f"webgpu: {what}: out of memory ({error})")
        return RuntimeError(f"webgpu: {what} failed on {self.adapter_name}: {error}")


def _out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "GPUOutOfMemoryError" or "out of memory" in str(error).lower()
