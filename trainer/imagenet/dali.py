"""The GPU loader: NVIDIA DALI decodes (nvJPEG / the A100-H100 JPEG engine) and cuts on the device.

Optional: needs `nvidia-dali-cuda130` (the `gpu` extra); only this module imports DALI. The
pipeline gets, per sample, the encoded file and OUR geometry (trainer.imagenet.feeder) through
`fn.external_source`, so it draws nothing itself: same order, same windows, same flips as the
portable loader. Graph: decoders.image_slice (ROI decode of the crop window) -> resize (linear,
antialiased) -> slice 224x224 -> flip -> CHW uint8. On a CUDA device the decoder is "mixed" and
the rest runs on the GPU; with device_id=None every operator is "cpu" (tests, benchmark).

A file DALI cannot decode (a truncated JPEG) aborts the pipeline run. Then that batch is decoded
on the CPU by the portable code (bad files there are skipped and logged), the pipeline is
rebuilt, and the pass goes on from the next batch. Files known bad (manifest --check, or found
earlier in this process) are never fed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Generator
from typing import Any

import torch

from trainer.imagenet.feeder import Encoded, Feeder
from trainer.imagenet.plan import Plan
from trainer.imagenet.portable import Decoded, decode_items

log = logging.getLogger(__name__)


def available() -> bool:
    """True if the DALI package imports."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def build_pipeline(source: Any, batch_size: int, num_threads: int, device_id: int | None, prefetch: int = 2) -> Any:
    """The decode-cut-resize-flip pipeline fed by `source` (a callable returning Encoded columns)."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    # device_id=None is DALI's documented CPU-only mode; its annotation says int.
    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=prefetch)
    def pipe():
        data, anchor, shape, out_size, post_anchor, post_shape, flip = fn.external_source(
            source=source, num_outputs=7, batch=True,
            dtype=[types.UINT8, types.INT32, types.INT32, types.FLOAT, types.INT32, types.INT32, types.INT32],
        )  # fmt: skip
        extra = {"jpeg_fancy_upsampling": True} if gpu else {}  # the CPU decoder's chroma upsampling
        images = fn.decoders.image_slice(  # type: ignore[call-overload]
            data, anchor, shape, device="mixed" if gpu else "cpu", output_type=types.RGB, axis_names="HW",
            adjust_orientation=False, **extra,  # sizes and windows are those of the header, as in the portable loader
        )  # fmt: skip
        images = fn.resize(images, size=out_size, antialias=True, interp_type=types.INTERP_LINEAR)
        images = fn.slice(images, post_anchor, post_shape, axis_names="HW")
        images = fn.flip(images, horizontal=flip)
        return fn.transpose(images, perm=[2, 0, 1])

    p = pipe()
    p.build()
    return p


def _to_torch(out: Any, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        t = out.as_tensor()
        dst = torch.empty(tuple(t.shape()), dtype=torch.uint8, device=device)
        feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream(device))
        return dst
    return torch.from_numpy(out.as_array())


def dali_batches(
    plan: Plan, start_step: int, device: torch.device, num_threads: int, reader_threads: int = 4
) -> Generator[Decoded, None, None]:
    """Batches start_step ... plan.steps - 1 of `plan`, decoded by DALI (on `device` if CUDA)."""
    feeder = Feeder(plan, reader_threads)
    device_id = (device.index if device.index is not None else torch.cuda.current_device()) if device.type == "cuda" else None
    step = start_step
    try:
        while step < plan.steps:
            source = _Source(feeder, step, plan.steps)
            pending = source.pending
            pipe = build_pipeline(source, plan.batch_size, max(1, num_threads), device_id)
            try:
                while step < plan.steps:
                    try:
                        (out,) = pipe.run()
                    except StopIteration:
                        while pending:  # trailing all-bad batches
                            enc = pending.popleft()
                            yield _empty(enc)
                            step += 1
                        break
                    while not len(pending[0]):
                        yield _empty(pending.popleft())
                        step += 1
                    enc = pending.popleft()
                    images = _to_torch(out, device)
                    yield Decoded(images, torch.tensor(enc.labels, dtype=torch.int64), enc.skipped, len(enc) + len(enc.skipped))
                    step += 1
            except Exception as err:  # DALI's errors are RuntimeErrors with a long multi-line text
                if not pending:
                    raise
                while not len(pending[0]):
                    yield _empty(pending.popleft())
                    step += 1
                enc = pending.popleft()
                log.warning("imagenet: DALI failed on batch %d (%s); decoding it on the CPU", enc.step, str(err).splitlines()[0][:200])
                d = decode_items(plan, enc.items)
                d.skipped = enc.skipped + d.skipped
                yield d
                step = enc.step + 1
            finally:
                del pipe
    finally:
        feeder.close()


class _Source:
    """external_source callback: the next batch's columns; DALI runs ahead (prefetch), so every
    batch handed over is queued in `pending`, in the order fed, until its output comes back."""

    def __init__(self, feeder: Feeder, start: int, stop: int) -> None:
        self.feeder, self.next, self.stop = feeder, start, stop
        self.pending: deque[Encoded] = deque()

    def __call__(self) -> tuple[list[Any], ...]:
        while self.next < self.stop:
            enc = self.feeder.batch(self.next)
            self.next += 1
            self.pending.append(enc)
            if len(enc):  # an all-bad batch is not fed (DALI takes no empty batch)
                return (enc.data, enc.crop_anchor, enc.crop_shape, enc.out_size, enc.post_anchor, enc.post_shape, enc.flip)
        raise StopIteration


def _empty(enc: Encoded) -> Decoded:
    return Decoded(torch.empty((0, 3, 224, 224), dtype=torch.uint8), torch.empty(0, dtype=torch.int64), enc.skipped, len(enc.skipped))
