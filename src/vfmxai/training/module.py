"""LightningModule around `ALAModel`: loss, augmentation on the device, AdamW, trainable-only checkpoints."""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import torch

from vfmxai.ala import ALAModel
from vfmxai.ala.monitor import localisation_statistics, map_statistics
from vfmxai.config import RunConfig, TrainConfig
from vfmxai.data import augment


def adamw(parameters: Iterable[torch.nn.Parameter], train: TrainConfig) -> torch.optim.AdamW:
    """The optimiser of every ALA training (and of `bench`'s train-step rows): AdamW with `train`'s lr,
    betas and weight decay."""
    return torch.optim.AdamW(parameters, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)


class ALALightning(L.LightningModule):
    def __init__(self, model: ALAModel, config: RunConfig):
        super().__init__()
        self.model = model
        self.config = config
        self.strict_loading = False
        """Checkpoints hold only the trainable weights; the frozen backbone comes from its own source."""

    def _augment_generator(self, batch_idx: int) -> torch.Generator:
        """Augmentation randomness from (seed, epoch, batch, DDP rank): identical after an interruption and
        resume; ranks draw differently (rank 0 as a single process does)."""
        seed = (self.config.train.seed * 1_000_003 + self.current_epoch) * 1_000_003 + batch_idx
        seed += self.global_rank * 0x9E3779B97F4A7C15
        return torch.Generator(device="cpu").manual_seed(seed % (2**63))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        tc = self.config.train
        images = augment(batch["image"], self._augment_generator(batch_idx), flip=tc.flip, crop_scale=tc.crop_scale)
        out = self.model.forward_all(images)
        loss = self.model.loss(out, batch["label"])
        acc = (out.logits.argmax(1) == batch["label"]).float().mean()
        self._log_epoch("train", loss, acc, len(images))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model.forward_all(batch["image"], map_on=True)
        loss = self.model.loss(out, batch["label"])
        acc = (out.logits.argmax(1) == batch["label"]).float().mean()
        self._log_epoch("val", loss, acc, len(batch["image"]))
        pb_loss = torch.nn.functional.cross_entropy(out.logits, batch["label"])
        self.log("val_pb_loss", pb_loss, on_step=False, on_epoch=True, batch_size=len(batch["image"]), sync_dist=True)
        self._log_map(out.alpha.detach(), batch)

    def _log_map(self, alpha: torch.Tensor, batch: dict) -> None:
        """Epoch means of the map's statistics on the validation split (`val_map_*`); pointing game, IoU and
        the mask share over the images that have a mask (`vfmxai.ala.monitor`)."""
        values = {name: (v.mean(), len(alpha)) for name, v in map_statistics(alpha).items()}
        has_mask = batch["has_mask"]
        if bool(has_mask.any()):
            loc = localisation_statistics(alpha[has_mask], batch["mask"][has_mask])
            values.update({name: (v.mean(), int(has_mask.sum())) for name, v in loc.items()})
        for name, (value, n) in values.items():
            self.log(f"val_map_{name}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)

    def _log_epoch(self, split: str, loss: torch.Tensor, acc: torch.Tensor, batch_size: int) -> None:
        """Epoch means; under DDP averaged over ranks (one all-reduce per epoch), so every rank's early
        stopping and best-weights decisions see the same numbers."""
        for name, value in (("loss", loss), ("acc", acc)):
            self.log(
                f"{split}_{name}", value, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size,
                sync_dist=True,
            )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over every trainable part; AEA toggles `requires_grad`, and AdamW skips params whose grad is None."""
        return adamw(self.model.trainable_parameters(), self.config.train)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {f"model.{k}" for k in self.model.trainable_state_dict()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
