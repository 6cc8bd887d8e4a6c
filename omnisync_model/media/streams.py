"""Sequential frame access over a stream of chunks, so long videos never sit in memory whole.

Shape legend: n frames in a chunk, H, W frame size, 3 channels.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

import torch


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
