"""What an explanation explains: a `Target` turns the model's output into one score per image.

`target.score(output, index) -> (n,)`: `output` is the scored model's output for n images (or perturbed
copies of them), `index` (n,) says for each row which target of the call it belongs to: its class for a
class target, else its image's position in the call's batch (a reference per image). Every explainer uses
the same score: a gradient method differentiates its sum (images do not interact, so gradients stay per
image), IG along the path, LRP as its starting relevance, Score-CAM and RISE on the masked copies.

`target.scored_model(model)` is the module whose output `score` reads: a classifier's logits for the class
targets; for the embedding targets, the image embedding of the backbone (`EmbeddingModel`: a bare
`Backbone`, or a classifier's backbone, whose head then plays no part).

- `ClassLogit` (the default of most methods), `ClassProbability` (softmax, float32; the default of RISE,
  Score-CAM, ViT-ReciproCAM, TIS and ViT-CX, as their papers score);
- `PromptScores`: CLIP image–text similarity, logit_scale · cos(image embedding, prompt embedding), the
  prompt embedded by the CLIP text tower; with prompts `against`, minus their mean: for one other prompt the
  log-odds of the prompt against it under CLIP's zero-shot softmax ("a photo of a cat" rather than "a photo
  of a dog");
- `ReferenceSimilarity`: cos(image embedding, reference embedding), for models with no head (DINOv2);
- `CallableScore`: any callable on the model's output, one score per row.

The embedding targets hold the image embedding's norm constant in the backward pass, cos = ⟨e, r̂⟩ / ‖e‖ with
‖e‖ detached (the value is the cosine): the exact gradient of a cosine vanishes at its maximum (an image
against itself has none at all) and near it mostly rotates e; held fixed, the gradient is r̂ / ‖e‖, "what
moves the embedding towards the reference", and gradient × embedding sums to the cosine, as AttnLRP's rule
for a normalisation (its standard deviation a constant) gives LRP. Masking methods see the plain cosine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmxai.backbones import Backbone
from vfmxai.classifier import Classifier
from vfmxai.errors import VfmxaiError


def target_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Each image's target logit (B,) of logits (B, C); its sum over the batch is the score the gradient
    methods differentiate (images do not interact, so gradients stay per image)."""
    return logits.gather(1, targets.view(-1, 1)).squeeze(1)


def target_probabilities(logits: Tensor, targets: Tensor) -> Tensor:
    """Each image's softmax probability (B,) of its target, computed in float32."""
    return logits.float().softmax(dim=1).gather(1, targets.view(-1, 1)).squeeze(1)


class EmbeddingModel(Classifier):
    """A backbone's image embedding as the scored output: projection(`Backbone.embedding`) (B, E); the
    projection is CLIP's visual projection for prompts, none (identity) otherwise. It reads only the pooled token,
    so it is defined for any number of tokens (TIS)."""

    any_token_count = True

    def __init__(self, backbone: Backbone, projection: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Identity() if projection is None else projection
        self.num_classes = 0
        """No classes: a class target on an embedding is refused."""

    def forward(self, images: Tensor) -> Tensor:
        return self.projection(self.backbone.embedding(images))


def _backbone_of(model: Classifier | Backbone, target: str) -> Backbone:
    if isinstance(model, Backbone):
        return model
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, Backbone):
        raise VfmxaiError(
            f"target {target}: needs a vfmxai Backbone or a Classifier with one, got {type(model).__name__}"
        )
    return backbone


def _held_norm_cosine(embedding: Tensor, unit_directions: Tensor) -> Tensor:
    """cos(e, r̂) per row, (n, E) x (n, E) -> (n,), with ‖e‖ constant in the backward pass (module docstring)."""
    embedding = embedding.float()
    return (embedding * unit_directions).sum(dim=-1) / embedding.norm(dim=-1).detach().clamp_min(1e-12)


class Target:
    """One score per image from the scored model's output (module docstring)."""

    per_class: bool = False
    """True when `index` is a class (the explainer picks the predicted class when none is given)."""

    def describe(self) -> str:
        """The target as error messages and outputs name it."""
        raise NotImplementedError

    def scored_model(self, model: Classifier | Backbone) -> Classifier:
        """The module whose output `score` reads (its backbone is the one the methods explain)."""
        raise NotImplementedError

    def score(self, output: Tensor, index: Tensor) -> Tensor:
        """(n,) scores of the rows of `output` (n, ...); `index` (n,) as the module docstring says."""
        raise NotImplementedError


class ClassLogit(Target):
    """The target class's logit: what the gradient methods' papers differentiate."""

    per_class = True

    def describe(self) -> str:
        return "class (logit)"

    def scored_model(self, model: Classifier | Backbone) -> Classifier:
        if isinstance(model, (Backbone, EmbeddingModel)):
            raise VfmxaiError(
                f"target {self.describe()}: a bare backbone has no class logits; explain a classifier, or use a "
                "reference or prompt target"
            )
        return model

    def score(self, output: Tensor, index: Tensor) -> Tensor:
        return target_logits(output, index)


class ClassProbability(ClassLogit):
    """The target class's softmax probability (float32): what RISE and Score-CAM score."""

    def describe(self) -> str:
        return "class probability"

    def score(self, output: Tensor, index: Tensor) -> Tensor:
        return target_probabilities(output, index)


class ReferenceSimilarity(Target):
    """cos(e(x), r): the image embedding's cosine similarity to a reference embedding r, (E,) for every image
    or (B, E) one per image of the call (`from_images` embeds reference images). e = `Backbone.embedding`
    (DINOv2: the normed class token)."""

    def __init__(self, reference: Tensor, name: str = "reference"):
        if not isinstance(reference, Tensor) or reference.dim() not in (1, 2) or not reference.is_floating_point():
            raise VfmxaiError(f"target {name}: the reference embedding must be a float tensor (E,) or (B, E)")
        if not bool(torch.isfinite(reference).all()) or not bool((reference.norm(dim=-1) > 0).all()):
            raise VfmxaiError(f"target {name}: the reference embedding must be finite and non-zero")
        self.reference = F.normalize(reference.detach().float().reshape(-1, reference.shape[-1]), dim=-1)
        self.name = name

    @classmethod
    def from_images(cls, model: Classifier | Backbone, images: Tensor, name: str = "reference") -> ReferenceSimilarity:
        """The target whose references are the embeddings of `images` (1 or B, 3, H, W) in the same model."""
        with torch.no_grad():
            return cls(EmbeddingModel(_backbone_of(model, name))(images), name)

    def describe(self) -> str:
        return self.name

    def scored_model(self, model: Classifier | Backbone) -> Classifier:
        backbone = _backbone_of(model, self.name)
        if backbone.hidden_size != self.reference.shape[-1]:
            raise VfmxaiError(
                f"target {self.name}: reference embedding of size {self.reference.shape[-1]}, but backbone "
                f"'{backbone.name}' embeds in {backbone.hidden_size}"
            )
        return EmbeddingModel(backbone)

    def score(self, output: Tensor, index: Tensor) -> Tensor:
        reference = self.reference.to(output.device)
        if reference.shape[0] > 1:
            if int(index.max()) >= reference.shape[0]:
                raise VfmxaiError(
                    f"target {self.name}: {reference.shape[0]} reference embeddings, fewer than the images explained"
                )
            reference = reference[index]
        return _held_norm_cosine(output, reference.expand(output.shape[0], -1))


class PromptScores(Target):
    """CLIP's image–text score of `prompt`: s = logit_scale · cos(W_v e(x), t_prompt), minus the mean of the
    same score for every prompt in `against` (module docstring). `clip` is a transformers `CLIPModel` whose
    vision tower is the explained backbone's; `tokenizer` its tokenizer. The text embeddings are computed once,
    here; W_v is `clip.visual_projection`."""

    def __init__(self, clip: nn.Module, tokenizer: Callable, prompt: str, against: Sequence[str] = ()):
        prompts = [prompt, *against]
        if any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise VfmxaiError("target prompt: every prompt must be non-empty text")
        if len(set(prompts)) != len(prompts):
            raise VfmxaiError(f"target prompt: the prompts repeat ({', '.join(prompts)}); contrast distinct ones")
        if not all(hasattr(clip, part) for part in ("text_model", "text_projection", "visual_projection")):
            raise VfmxaiError(f"target prompt: needs a CLIPModel with its text tower, got {type(clip).__name__}")
        tokens = tokenizer(prompts, padding=True, return_tensors="pt")
        device = clip.text_projection.weight.device
        with torch.no_grad():
            mask = tokens.get("attention_mask")
            pooled = clip.text_model(
                input_ids=tokens["input_ids"].to(device), attention_mask=None if mask is None else mask.to(device)
            ).pooler_output
            text = clip.text_projection(pooled)
        self.text = F.normalize(text.float(), dim=-1)
        """(P, E) unit text embeddings: the prompt first, then `against`."""
        self.logit_scale = float(clip.logit_scale.detach().exp())
        self.projection = clip.visual_projection
        self.prompts = prompts

    def describe(self) -> str:
        quoted = [f'"{p}"' for p in self.prompts]
        return f"prompt {quoted[0]}" + (f" against {', '.join(quoted[1:])}" if len(quoted) > 1 else "")

    def scored_model(self, model: Classifier | Backbone) -> Classifier:
        backbone = _backbone_of(model, "prompt")
        if backbone.hidden_size != self.projection.in_features:
            raise VfmxaiError(
                f"target prompt: the CLIP's visual projection takes width {self.projection.in_features}, but "
                f"backbone '{backbone.name}' has width {backbone.hidden_size} (not this CLIP's vision tower)"
            )
        return EmbeddingModel(backbone, self.projection.to(backbone.mean.device))

    def score(self, output: Tensor, index: Tensor) -> Tensor:
        text = self.text.to(output.device)
        direction = text[0] if len(text) == 1 else text[0] - text[1:].mean(dim=0)
        return self.logit_scale * _held_norm_cosine(output, direction.expand(output.shape[0], -1))


class CallableScore(Target):
    """`fn(output) -> (n,)` on the output of `model` as given (a classifier's logits; a bare backbone's
    embedding). Each row must be scored on its own: the rows are images, or masked copies of them."""

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str = "callable"):
        if not callable(fn):
            raise VfmxaiError(f"target {name}: needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name

    def describe(self) -> str:
        return self.name

    def scored_model(self, model: Classifier | Backbone) -> Classifier:
        return EmbeddingModel(model) if isinstance(model, Backbone) else model

    def score(self, output: Tensor, index: Tensor) -> Tensor:
        scores = self.fn(output)
        if not isinstance(scores, Tensor) or scores.shape != (output.shape[0],):
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise VfmxaiError(f"target {self.name}: the callable must return one score per row, ({output.shape[0]},), "
                              f"got {got}")
        return scores


def check_target(target: object, method: str) -> Target:
    if not isinstance(target, Target):
        raise VfmxaiError(
            f"method '{method}': target must be a vfmxai.targets.Target (ClassLogit, ClassProbability, PromptScores, "
            f"ReferenceSimilarity, CallableScore), got {type(target).__name__}"
        )
    return target
