"""Training with the OmniSync recipe on the synthetic talking-face suite (``omnisync train``).

Mask-free objective (conditional flow matching, linear path): the target is the window whose lips match the audio;
the visual condition is a *different* window of the same clip, so its lips belong to other speech and cannot be
copied. Timestep-dependent pairs: for sigma above ``threshold`` (default 0.85, the paper's 850/1000) the condition
is a pseudo-pair (same frames and pose, only the mouth differs, rendered from other speech); below it, an arbitrary
other window of the same clip. Audio is dropped with probability ``audio_dropout`` so that CFG has an
unconditional branch. ``mouth_weight`` > 0 weights the loss by where the target and its condition differ (the lips:
:func:`difference_weights`; training only, the model stays mask-free); ``init`` fine-tunes from a checkpoint.
AdamW, EMA weights, checkpoint + resume (safetensors only), single process or torchrun/DDP.

Shape legend: B batch, T frames per window (= latent frames, pixel codec), C latent channels, h, w latent size,
F clip frames, H, W frame size, K audio tokens per frame, A audio width.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..core.audio import audio_span_for_frames, frame_centre_times
from ..core.codec import PixelCodec
from ..core.files import atomic_output, atomic_write_text
from ..families.omnisync.config import get_preset
from ..sampling.flow import noisy_sample, velocity_target
from ..families.omnisync.model import OmniSyncModel, count_parameters
from ..sampling.pipeline import LipSyncOptions
from .synthetic import ClipSpec, make_clip, make_speech, mouth_opening
from .train_config import TrainConfig
from ..families.omnisync.weights import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

AUDIO_MARGIN_S = LipSyncOptions().audio_margin_s  # audio context on each side of a window, as at inference


@dataclass
class ClipData:
    frames: torch.Tensor  # [F,H,W,3] uint8, lips driven by this clip's speech
    pseudo: torch.Tensor  # [F,H,W,3] uint8, same spec, lips from other speech
    wave: torch.Tensor  # [N] 16 kHz
    fps: float


def _to_u8(frames: torch.Tensor) -> torch.Tensor:
    return (frames * 255.0).round().clamp(0, 255).to(torch.uint8)


def make_clip_data(index: int, tc: TrainConfig) -> ClipData:
    """One training clip: spec seeded by (data_seed + index); style cycles; fps from fps_choices."""
    seed = tc.data_seed + index
    fps = tc.fps_choices[index % len(tc.fps_choices)]
    n = int(round(tc.clip_seconds * fps))
    spec = ClipSpec(seed=seed, style=tc.styles[index % len(tc.styles)], n_frames=n, fps=fps, size=tc.size,
                    occluder=index % 5 == 4)
    wave, _ = make_speech(seed, tc.clip_seconds)
    other, _ = make_speech(seed + 7_919_000, tc.clip_seconds)
    own = make_clip(spec, mouth_opening(wave, 16000, fps, n))
    fake = make_clip(spec, mouth_opening(other, 16000, fps, n))
    return ClipData(_to_u8(own.frames), _to_u8(fake.frames), wave, fps)


class Batches:
    """Samples (target, condition, sigma, audio) batches from an in-memory synthetic set."""

    def __init__(self, tc: TrainConfig, clips: list[ClipData], seed: int):
        self.tc, self.clips = tc, clips
        self.gen = torch.Generator().manual_seed(seed)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.gen))

    def _other_start(self, n: int, a: int) -> int:
        """A window start whose frames do not overlap [a, a+T) when the clip allows it."""
        t = self.tc.frames
        choices = [c for c in range(n - t + 1) if abs(c - a) >= t] or [c for c in range(n - t + 1) if c != a] or [a]
        return choices[self._randint(len(choices))]

    def sample(self) -> dict:
        tc = self.tc
        sig = torch.rand(tc.batch, generator=self.gen)
        tgt, cond, starts, idx = [], [], [], []
        for b in range(tc.batch):
            i = self._randint(len(self.clips))
            clip = self.clips[i]
            n = clip.frames.shape[0]
            a = self._randint(n - tc.frames + 1)
            tgt.append(clip.frames[a:a + tc.frames])
            if sig[b] > tc.threshold:  # pseudo-pair: same pose, other lips
                cond.append(clip.pseudo[a:a + tc.frames])
            else:  # arbitrary other window of the same clip
                c = self._other_start(n, a)
                cond.append(clip.frames[c:c + tc.frames])
            starts.append(a)
            idx.append(i)
        drop = torch.rand(tc.batch, generator=self.gen) < tc.audio_dropout
        c = 3 * 4 * 4
        noise = torch.randn((tc.batch, c, tc.frames, tc.size // 4, tc.size // 4), generator=self.gen)
        return {"target": torch.stack(tgt), "cond": torch.stack(cond), "sigma": sig, "drop": drop,
                "starts": starts, "clips": idx, "noise": noise}


def encode_batch(codec: PixelCodec, frames_u8: torch.Tensor) -> torch.Tensor:
    """[B,T,H,W,3] uint8 -> [B,C,T,h,w] latents."""
    return torch.cat([codec.encode(f.float() / 255.0) for f in frames_u8], dim=0)


def batch_audio_tokens(model: OmniSyncModel, clips: list[ClipData], batch: dict, frames: int,
                       margin_s: float = AUDIO_MARGIN_S) -> torch.Tensor:
    """Audio tokens [B,T,K,A] for each target window: the same slicing by absolute time as inference."""
    out = []
    for i, a in zip(batch["clips"], batch["starts"]):
        clip = clips[i]
        s0, s1, offset = audio_span_for_frames(a, a + frames, clip.fps, 16000, margin_s, n_samples=clip.wave.numel())
        centres = frame_centre_times(frames, clip.fps) + a / clip.fps  # [T] seconds
        out.append(model.audio_tokens(clip.wave[None, s0:s1], offset, centres))
    return torch.cat(out, dim=0)


class FlowLoss(torch.nn.Module):
    """The whole loss as one module, so DDP sees every parameter (DiT and audio encoder) in one forward."""

    def __init__(self, model: OmniSyncModel, clips: list[ClipData], codec: PixelCodec, mouth_weight: float = 0.0):
        super().__init__()
        self.model, self.clips, self.codec = model, clips, codec
        self.mouth_weight = mouth_weight

    def forward(self, batch: dict) -> torch.Tensor:
        """Flow-matching loss. For prediction='source_x0' it is measured on x0 (= sigma^2 * velocity error)."""
        x0 = encode_batch(self.codec, batch["target"])  # [B,C,T,h,w]
        src = encode_batch(self.codec, batch["cond"])
        noise = batch["noise"]  # [B,C,T,h,w] standard normal
        sigma = batch["sigma"]
        x = noisy_sample(x0, noise, sigma)
        audio = batch_audio_tokens(self.model, self.clips, batch, x0.shape[2])
        v = self.model(x, src, sigma, audio, drop_audio=batch["drop"])
        err = v.float() - velocity_target(x0, noise)
        if self.model.config.prediction == "source_x0":
            err = err * sigma.view(-1, 1, 1, 1, 1)  # [B] -> [B,1,1,1,1]: x0 error
        sq = err.pow(2)
        if self.mouth_weight > 0.0:
            sq = sq * difference_weights(x0, src, self.mouth_weight)
        return sq.mean()


def difference_weights(x0: torch.Tensor, src: torch.Tensor, k: float) -> torch.Tensor:
    """Per-position loss weights [B,1,T,h,w] = 1 + k * d / max(d), d = mean over channels of |x0 - src|.

    Training data only (never at inference, so the model stays mask-free): where the target and its condition
    differ is where the lips differ, and thin low-contrast lips differ by little, so a plain mean-squared error
    lets the model copy them from the condition. Normalising by each sample's largest difference gives every
    style the same emphasis. The weights are rescaled to mean 1 so the loss keeps its scale.
    """
    d = (x0 - src).abs().mean(dim=1, keepdim=True)  # [B,C,T,h,w] -> [B,1,T,h,w]
    peak = d.flatten(1).amax(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1, 1)  # [B] -> [B,1,1,1,1]
    w = 1.0 + k * d / peak
    return w / w.flatten(1).mean(dim=1).view(-1, 1, 1, 1, 1)  # mean 1 per sample


class Trainer:
    def __init__(self, tc: TrainConfig, out_dir: Path, resume: bool = False):
        self.tc, self.out = tc, out_dir
        self.rank, self.world = _dist_info()
        torch.manual_seed(tc.seed)
        cfg = get_preset(tc.preset).replace(prediction=tc.prediction, extra={"resolution": tc.size})
        self.model = OmniSyncModel(cfg)
        if tc.init:
            self._init_from(Path(tc.init))
        self.ema = OmniSyncModel(cfg).requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        self.codec = PixelCodec(4)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, betas=(0.9, 0.99), weight_decay=tc.weight_decay)
        self.step = 0
        self._batch_rng: Optional[torch.Tensor] = None
        if resume and (out_dir / "train_state.safetensors").exists():
            self._load_state()
        self.clips: list[ClipData] = []
        self.batches: Optional[Batches] = None
        self.loss_fn: Optional[torch.nn.Module] = None

    def _init_from(self, path: Path) -> None:
        """Weights from a checkpoint of the same architecture (fine-tuning); the optimiser starts fresh."""
        start = load_checkpoint(path)
        if start.config.replace(extra={}) != self.model.config.replace(extra={}):
            raise ValueError(f"--init {path}: its config ({start.config.name}, prediction={start.config.prediction}) "
                             f"differs from the run's ({self.model.config.name}, "
                             f"prediction={self.model.config.prediction}); pick the matching --preset/--prediction")
        self.model.load_state_dict({k: v.float() for k, v in start.state_dict().items()})
        log.info("initialised from %s", path)

    def set_data(self, clips: list[ClipData]) -> None:
        self.clips = clips
        self.batches = Batches(self.tc, clips, seed=self.tc.seed * 7919 + self.rank)
        if self._batch_rng is not None:
            self.batches.gen.set_state(self._batch_rng)
        loss = FlowLoss(self.model, clips, self.codec, self.tc.mouth_weight)
        self.loss_fn = torch.nn.parallel.DistributedDataParallel(loss) if self.world > 1 else loss

    def lr_at(self, step: int) -> float:
        tc = self.tc
        if step < tc.warmup:
            return tc.lr * (step + 1) / tc.warmup
        progress = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
        return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    def train_step(self, batch: dict) -> float:
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.tc.bf16 and not torch.cuda.is_available()):
            loss = self.loss_fn(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self._update_ema()
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = min(self.tc.ema, (1 + self.step) / (10 + self.step))
        for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
            pe.lerp_(pm.detach(), 1 - d)

    def save(self) -> Path:
        if self.rank != 0:
            return self.out / "checkpoint.safetensors"
        self.out.mkdir(parents=True, exist_ok=True)
        meta = {"train_config": json.dumps(asdict(self.tc), default=list), "train_step": str(self.step)}
        save_checkpoint(self.out / "checkpoint.safetensors", self.ema, metadata=meta)
        tensors = {f"model.{k}": v.contiguous() for k, v in self.model.state_dict().items()}
        for i, (name, p) in enumerate(self.model.named_parameters()):
            st = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"opt.{name}.{key}"] = st[key].contiguous()
        if self.batches is not None:
            tensors["rng.batches"] = self.batches.gen.get_state()
        with atomic_output(self.out / "train_state.safetensors") as tmp:  # renamed into place only when complete
            save_file(tensors, str(tmp), metadata={"step": str(self.step), "opt_step": str(self._opt_step())})
        return self.out / "checkpoint.safetensors"

    def _opt_step(self) -> int:
        for st in self.opt.state.values():
            return int(st["step"])
        return 0

    def _load_state(self) -> None:
        from safetensors import safe_open

        path = self.out / "train_state.safetensors"
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.ema = load_checkpoint(self.out / "checkpoint.safetensors").requires_grad_(False)
        opt_step = torch.tensor(float(meta["opt_step"]))
        for name, p in self.model.named_parameters():
            if f"opt.{name}.exp_avg" in tensors:
                self.opt.state[p] = {"step": opt_step.clone(), "exp_avg": tensors[f"opt.{name}.exp_avg"],
                                     "exp_avg_sq": tensors[f"opt.{name}.exp_avg_sq"]}
        self.step = int(meta["step"])
        self._batch_rng = tensors.get("rng.batches")
        log.info("resumed from %s at step %d", path, self.step)


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_dataset(tc: TrainConfig) -> list[ClipData]:
    t0 = time.perf_counter()
    clips = [make_clip_data(i, tc) for i in range(tc.clips)]
    log.info("generated %d synthetic clips (%s) in %.1fs", len(clips), ", ".join(tc.styles), time.perf_counter() - t0)
    return clips


def run_training(tc: TrainConfig, out_dir: Path, resume: bool = False, clips: Optional[list[ClipData]] = None,
                 stop_at: Optional[int] = None) -> tuple[Trainer, list[float]]:
    """Train up to ``tc.steps`` (or ``stop_at``) steps, continuing a saved run when ``resume``; returns the losses."""
    trainer = Trainer(tc, out_dir, resume=resume)
    trainer.set_data(clips if clips is not None else build_dataset(tc))
    if trainer.rank == 0:
        log.info("training %s (%s parameters, prediction=%s) for %d steps, batch %d x %d frames x %dpx, world %d",
                 tc.preset, f"{count_parameters(trainer.model):,}", tc.prediction, tc.steps, tc.batch, tc.frames,
                 tc.size, trainer.world)
    losses: list[float] = []
    t0, recent = time.perf_counter(), []
    last = min(tc.steps, stop_at or tc.steps)
    while trainer.step < last:
        loss = trainer.train_step(trainer.batches.sample())
        losses.append(loss)
        recent.append(loss)
        if trainer.rank == 0 and (trainer.step % tc.log_every == 0 or trainer.step == tc.steps):
            rate = trainer.step / max(time.perf_counter() - t0, 1e-9)
            log.info("step %d/%d loss %.5f lr %.2e (%.2f steps/s)", trainer.step, tc.steps,
                     sum(recent) / len(recent), trainer.lr_at(trainer.step), rate)
            recent = []
        if trainer.step % tc.save_every == 0 or trainer.step == last:
            trainer.save()
    return trainer, losses


def replica_checksums(model: torch.nn.Module) -> list[list[float]]:
    """Per-rank [sum, sum of squares, weighted sum] of all parameters (all ranks must agree under DDP)."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    mine = torch.stack([flat.sum(), flat.pow(2).sum(), (flat * torch.arange(flat.numel(), dtype=torch.float64)).sum()])
    if not dist.is_initialized():
        return [mine.tolist()]
    gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    return [g.tolist() for g in gathered]


def _cmd_train(args: argparse.Namespace) -> int:
    from ..cli.main import emit

    names = ("preset", "prediction", "steps", "batch", "frames", "size", "clips", "warmup", "seed", "log_every",
             "save_every", "lr", "threshold", "audio_dropout", "clip_seconds", "ema", "weight_decay", "mouth_weight")
    tc = TrainConfig(bf16=args.bf16, init=str(args.init or ""), **{n: getattr(args, n) for n in names})
    trainer, losses = run_training(tc, args.out, resume=args.resume)
    sums = replica_checksums(trainer.model)
    if trainer.rank == 0:
        atomic_write_text(args.out / "replicas.json", json.dumps({"world": trainer.world, "checksums": sums}))
        if any(s != sums[0] for s in sums):
            log.error("parameters differ between ranks: %s", sums)
        head = sum(losses[:20]) / max(1, len(losses[:20]))
        tail = sum(losses[-20:]) / max(1, len(losses[-20:]))
        emit(f"trained to step {trainer.step}: loss {head:.5f} (first 20) -> {tail:.5f} (last 20); "
             f"checkpoint {args.out / 'checkpoint.safetensors'}")
    if dist.is_initialized():
        dist.barrier()  # every rank is done (rank 0 has written its files) before the group is torn down
        dist.destroy_process_group()
    return 0
