"""The words vfmxai accepts, each defined once: dataset names, method keys, metric choices, precisions and
the synthetic set's default sizes. Imports nothing, so the command line can build its parser without torch."""

DATASETS = ("synthetic", "folder", "cub", "imagenet-s", "oxford-pet")
METHODS = ("ala", "gradcam", "scorecam", "ig", "guided_bp", "lrp", "rise", "rollout", "transformer_attribution", "daam")
"""The method keys of the ALA paper's comparison (Table 2), in the order `methods="all"` evaluates them."""
VIT_METHODS = ("raw_attention", "legrad", "beyond_intuition", "vit_reciprocam", "tis", "vit_cx")
"""The ViT-explanation methods of 2023-2026 beside them (issue 15; GAE is `transformer_attribution`), evaluated by
`methods="all"` after the ten."""
SUBSTRATES = ("black", "blur", "mean")
"""What removed pixels become in insertion/deletion (`vfmxai.metrics.make_substrate`)."""
EVAL_SUBSTRATES = (*SUBSTRATES, "model-mean")
"""`model-mean`: the backbone's normalisation mean colour, i.e. zero in its normalised input space (ImageNet's
mean for DINOv2, CLIP's for CLIP), beside the pixel-space substrates."""
TARGET_MODES = ("given", "predicted")
"""The class explained and scored: the ground truth (the paper) or the model's prediction."""
EXPLAIN_TARGETS = ("class", "logit", "prob", "prompt:TEXT", "reference:IMAGE")
"""What `explain --target` explains (`vfmxai.explain`): the predicted class by each method's own score, its logit
or probability for every method, a CLIP prompt, or the similarity to a reference image."""
SCORES = ("probability", "logit")
"""What a perturbation metric reads of the target class: its softmax probability or its logit."""
EVAL_METRICS = (
    "miou", "insertion_deletion", "pointing_game", "energy_pg", "aopc", "road", "sparseness", "complexity",
    "max_sensitivity", "avg_sensitivity", "infidelity", "relevance_mass", "relevance_rank",
)
"""The metrics `evaluate --metrics` chooses among, one name per metric (`vfmxai.evaluation.metric_set`)."""
DEFAULT_EVAL_METRICS = ("miou", "insertion_deletion", "pointing_game", "energy_pg")
"""The ALA paper's protocol (mIoU with its dataset-level and best-τ variants, insertion/deletion/ID, both
pointing games): what an evaluation scores unless told otherwise."""
THRESHOLD_ON = ("normalised", "raw")
"""`normalised` (every method): τ applies to the min-max normalised map. `raw`: τ applies to the map as the
method returns it (upsampled), for mIoU and dataset mIoU; meant for maps on a fixed [0, 1] scale (ALA's
sigmoid alpha); a map with values outside [0, 1] is refused. Every other score, the best-τ oracle included,
reads the normalised map either way."""
PRECISIONS = ("auto", "bf16", "fp32")
"""`auto`: bf16 autocast on a GPU, fp32 on a CPU (where bf16 matrix work is slower than fp32 on most chips)."""
SYNTHETIC_SPLITS = {"n_train": 600, "n_val": 120, "n_test": 120}
"""Default split sizes of the synthetic set."""
SYNTHETIC_SIZE = 64
"""Default side of the synthetic images in pixels."""
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 4096
"""The input sides `--image-size` accepts (bench, explain --backbone), those of `backbone.image_size`."""
SYNTHETIC_TASKS = ("demo", "pretrain")
PET_BOUNDARIES = ("background", "object")
"""Where Oxford-IIIT Pet's trimap boundary band goes: `background` (object = the trimap's foreground, DESIGN §5)
or `object`."""
