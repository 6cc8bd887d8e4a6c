"""Frame sources for the pipeline: sequential access over a stream of chunks (long videos never sit in memory
whole) and per-frame face crops of frames in memory (made window by window).

Shape legend: n frames in a chunk, H, W frame size, 3 channels.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

import torch

from .regions import check_boxes, crop_per_frame


class SequentialFrames:
    """Slice-able view of a chunk iterator; requests must come with non-decreasing starts.

    ``frames[a:b]`` reads ahead as needed and forgets everything before ``a``, so memory is bounded by the
    largest window asked for plus one chunk. ``transform`` is applied to each chunk as it is read.
    """

    def __init__(self, chunks: Iterable[torch.Tensor], n_frames: int,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self._it: Iterator[torch.Tensor] = iter(chunks)
        self._n = n_frames
        self._transform = transform
        self._buf: list[torch.Tensor] = []
        self._buf_start = 0  # absolute index of the first buffered frame
        self._buf_len = 0

    def __len__(self) -> int:
        return self._n

    def _read_until(self, end: int) -> None:
        while self._buf_start + self._buf_len < end:
            try:
                chunk = next(self._it)
            except StopIteration:
                raise ValueError(f"the video stream ended after {self._buf_start + self._buf_len} frames, "
                                 f"expected {self._n}") from None
            if self._transform is not None:
                chunk = self._transform(chunk)
            self._buf.append(chunk)
            self._buf_len += chunk.shape[0]

    def _forget_before(self, start: int) -> None:
        while self._buf and self._buf_start + self._buf[0].shape[0] <= start:
            first = self._buf.pop(0)
            self._buf_start += first.shape[0]
            self._buf_len -= first.shape[0]

    def __getitem__(self, item: slice) -> torch.Tensor:
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("SequentialFrames supports only contiguous slices")
        start, end, _ = item.indices(self._n)
        if start < self._buf_start:
            raise IndexError(f"frame {start} was already released (stream is at {self._buf_start})")
        self._read_until(end)
        self._forget_before(start)
        joined = torch.cat(self._buf, dim=0) if len(self._buf) > 1 else self._buf[0]  # [buffered,H,W,3]
        return joined[start - self._buf_start:end - self._buf_start]


class CroppedFrames:
    """Frames in memory [F,H,W,3] seen through per-frame crop boxes [F,4] (x, y, w, h): ``crops[a:b]`` crops
    frames a..b-1 at their boxes and resizes them to ``hw`` (float32 [b-a,h,w,3]); nothing is cropped ahead."""

    def __init__(self, frames: torch.Tensor, boxes: torch.Tensor, hw: tuple[int, int]):
        self._frames = frames
        self._boxes = check_boxes(boxes, frames.shape[0], frames.shape[1], frames.shape[2])
        self._hw = (int(hw[0]), int(hw[1]))

    def __len__(self) -> int:
        return int(self._frames.shape[0])

    def __getitem__(self, item: slice) -> torch.Tensor:
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("CroppedFrames supports only contiguous slices")
        start, end, _ = item.indices(len(self))
        return crop_per_frame(self._frames[start:end], self._boxes[start:end], self._hw)
