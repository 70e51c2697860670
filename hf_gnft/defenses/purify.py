"""Purification: invert the trigger from clean data, then unlearn it with GN-FT.

The defender has the suspect and a small clean labelled subset. Purification

1. **detects**: inverts every class from clean clips (the validation split, which the suspect was not trained on,
   when there is one) ([`hf_gnft.inversion.invert_classes`], the scan's
   additive inversion and a spectral one that can express pitch-shift and filter triggers) and takes the classes
   whose inversion success stands out (gap over the median class above a threshold) for backdoor targets;
2. **shapes** the surrogate: each suspected target is inverted again with the shape families (`purify_shapes`: a
   free pattern in one short window, a tone; [`hf_gnft.inversion.invert_burst`], [`invert_tonal`]); a shape that
   sends most held-out clips to the target is what real audio triggers look like (a short loud sound, a tone) and
   becomes the surrogate, in place of the detection's whole-clip perturbation (measured on `make demo`'s suspect:
   unlearning the whole-clip surrogate left a backdoor that a clean fine-tune brought back, issue 26);
3. **unlearns**: fine-tunes with [`GNFTTrainer`] (GN-FT is the engine) on the clean subset plus copies of clean
   clips carrying the inverted triggers, with their TRUE labels, so that the trigger stops meaning "target";
4. **re-inverts** against the current model at the start of each of `purify_rounds` rounds (one training run,
   one schedule, rounds split its steps), so the next round unlearns whatever shortcut is still there.
5. optionally keeps only a share w of the weight change (`purify_interpolation_weight`, chosen by the defender's
   rule on clean validation accuracy), or **walks back** towards the suspect's weights along the straight line
   between the two while a fresh inversion on held-out clean clips finds the trigger no easier
   (`purify_interpolation_step`, [`walk_back`]): much of the CA cost lies on the last part of that line, but the
   inversion can miss what is left of a trigger, so neither is on by default.

A model in which no class stands out is not touched by unlearning: purification then runs GN-FT with the same
number of steps at the GN-FT defense's learning rate (`purify_fallback_learning_rate`) and `info["fallback"]`
says so (the card too).

This is the recipe of the unlearning defenses that reach low attack success with little clean data on images
(I-BAU, Zeng et al., ICLR 2022; BTI-DBF(U), Xu et al., ICLR 2024; SAU, Wei et al., NeurIPS 2023): unlearn an
inverted trigger, with its true labels. The inversion here is simpler than theirs (a universal perturbation or
a pitch shift plus filter, re-inverted per round, rather than a minimax or a generator).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets
from transformers import PreTrainedModel

from ..inversion import (
    DEFAULT_THRESHOLDS,
    DETECTION_FAMILIES,
    LOCALISED_FAMILIES,
    InversionError,
    InversionSettings,
    InvertedTrigger,
    candidate_classes,
    check_inversion_settings,
    class_batches,
    input_name,
    invert,
    invert_classes,
    model_input,
    pitch_shifted,
    refine_suspects,
    supported_families,
)
from ..training import AudioClassificationCollator, audio_batches
from .base import (
    DefenseInputError,
    DefenseOutcome,
    check_clean_subset,
    copy_model,
    fine_tune,
    is_finite_number,
)
from .encoder_relearning import (
    check_crop,
    feature_encoder,
    relearn_feature_encoder,
    relearn_upper_layers,
    set_encoder_trainable,
)
from .gnft_config import DefenseConfig
from .gnft_trainer import GNFTTrainer

logger = logging.getLogger(__name__)

DEFENSE_NAME = "purify"
#: the column that marks a training row as a copy to carry an inverted trigger (-1: a clean row)
TRIGGER_COLUMN = "purify_trigger"
#: the batch key under which the frozen suspect's logits on each row's clean clip reach `compute_loss`
TEACHER_KEY = "purify_teacher_logits"
#: the batch key holding, per row, the target class its trigger must stop predicting (−1: the row's true label)
AVOID_KEY = "purify_avoid_target"
#: the unlearning objectives of the triggered copies
OBJECTIVES = ("true_label", "avoid_target")


@dataclass
class PurifyConfig(DefenseConfig):
    """Configuration of purification: [`DefenseConfig`] (GN-FT with r = 0.05, α = 0.7, SGD with momentum 0.9, the
    training budget) plus the inversion and the unlearning mix.

    The learning rate defaults to 0.05, not the other defenses' 0.01: unlearning at 0.01 is shallow, and a clean
    fine-tune brings the backdoor back even after unlearning the TRUE trigger (measured on `make demo`'s suspect:
    24.8 / 51.8% ASR after clean fine-tunes at 0.01 / 0.05, against 0.1 / 1.4% after unlearning at 0.05; issue 26).

    The training budget (`num_train_epochs`, `max_steps`) counts steps over the mixed set (the clean subset
    plus `purify_mix_ratio` as many triggered copies): at the default 20/3 epochs and a ratio of 2 that is about
    as many steps as FT's and GN-FT's 20 epochs over the clean subset alone (133 against 140 for 200 clips,
    batches of 32); the repair (`purify_repair_epochs`, 20) then adds FT's own budget.

    Args:
        purify_families (`list[str]`, *optional*, defaults to `["additive", "spectral"]`):
            The detection's inversion families (see `hf_gnft.inversion`; the scan's calibrated statistics), also
            unlearned where no shape family stands in for them (`purify_shapes`).
        purify_shapes (`list[str]`, *optional*, defaults to `["burst"]`):
            The shape families each suspected target is inverted with at the rounds' settings: a short loud sound
            in one window (`burst`) and a sinusoid (`tonal`). The most successful of those whose held-out success
            reaches `purify_shape_min_success` becomes the target's surrogate in place of the detection's families
            (a surrogate shaped like the trigger, rather than a faint perturbation over the whole clip); a target
            the additive detection did not name, or the spectral one reached more often (a pitch-shift trigger), is
            not shaped and keeps the detection's surrogates ([`unlearning_plan`]). `[]`: the
            detection's families only (the behaviour before issue 26). `tonal` is not on by default: on `make
            demo`'s noise-burst suspect a tone reached the target about as often as the burst (0.81–0.84 against
            0.82–0.89), won on one draw of the inversion clips, and unlearning it left 59.8% ASR.
        purify_shape_min_success (`float`, *optional*, defaults to `0.6`):
            The held-out success a shape inversion needs to become the surrogate.
        purify_repair_epochs (`float`, *optional*, defaults to `20.0`):
            After unlearning, a plain fine-tune (no gradient-norm term) on the clean subset alone for this many
            epochs (0: none): unlearning deep enough to last costs clean accuracy, and a clean fine-tune wins most
            of it back without bringing the backdoor back. Measured on `make demo`'s suspect (docs/lasting.md, one
            seed): twice the triggered copies and this repair, 92.5 / 4.4% (validation −2.8), 6.2 / 4.8% after the
            relapse check's clean fine-tunes, 7.3% after retuning; one copy per clip and no repair, 88.4 / 1.7%
            (validation −6.4), 10.6 / 21.7%, 7.1%. Not after the GN-FT fallback.
        purify_repair_learning_rate (`float`, *optional*, defaults to `0.01`):
            The repair's learning rate (the FT defense's).
        purify_fallback_learning_rate (`float`, *optional*, defaults to `0.01`):
            The learning rate of the GN-FT fallback when no class stands out (the GN-FT defense's; `None`: the
            unlearning's `learning_rate`). Purify's larger rate buys depth of unlearning; with nothing to unlearn it
            only costs accuracy. Measured on the lasting grid's tiny Wav2Vec2 trained without poisoning (3 seeds,
            the cells of commit 11823ca): the fallback at 0.02 / 0.05 lost 1.0 / 1.2 points of test accuracy on
            average, FT at 0.01 0.6.
        purify_fallback_distillation (`float`, *optional*, defaults to `0.0`):
            Weight w of a distillation from the frozen suspect during the GN-FT fallback, as in the repair
            (`purify_repair_distillation`), with no class left out (0: plain GN-FT). Measured on the lasting grid's
            models trained without poisoning (3 seeds, docs/lasting.md): w = 0.8 holds tiny HuBERT's test accuracy
            (a cost of 0.4 points instead of 1.2, which FT at 0.01 costs too) but not tiny Wav2Vec2's (1.1 instead
            of 0.7), and its teacher's forward passes take HuBERT's purify from 4.1× to 5.5× FT's time. Off by
            default for that reason.
        purify_repair_distillation (`float`, *optional*, defaults to `0.8`):
            Weight w of a distillation from the frozen suspect during the repair: each clean clip's loss becomes
            (1 − w) · CE(true label) + w · T² · KL(suspect(clip) ‖ model(clip)), the suspect's leaning to the
            suspected target left out (`purify_distillation_hides_target`). The suspect answers clean clips well,
            and its soft answers carry more than the 200 labels do; no clip carries a trigger. Measured on the
            small grid's tiny Wav2Vec2 noise-burst suspect (seed 0, docs/lasting.md): validation −1.8 against −2.8
            without it (CA / ASR 96.7 / 4.1%, relapse 6.4 / 10.9%, retuned 25.3% against 21.2%); on its tone
            suspect −3.2 against −4.2, with relapse 1.6 / 1.8% and 1.8% retuned. Without hiding the target the
            backdoor came back more (retuned 37.0%).
        purify_relearn_encoder_steps (`int`, *optional*, defaults to `3000`):
            When a target is suspected and the model has a convolutional waveform encoder (Wav2Vec2, HuBERT and
            their kin), the encoder is first re-initialised and trained for this many steps to reproduce the
            suspect's encoder outputs on the clean clips ([`hf_gnft.defenses.encoder_relearning`]); unlearning then
            trains the whole model, and the repair leaves the re-learned encoder frozen. A backdoor keyed to one
            exact waveform lives there, and no inverted surrogate reaches it. Measured on the small grid's tiny
            Wav2Vec2 noise-burst suspect (3-seed grid, docs/lasting.md; lr 0.05): 95.1–96.5 / 0.0–0.3%, validation
            −3.2 to −4.2, relapse at most 1.1%, retuned 1.7 / 7.3 / 15.2% (with 1,500 steps on whole clips 4.0 /
            27.3 / 8.0%; without re-learning 25.3% on seed 0). It adds 54–63 s
            on 2 cores for 200 one-second clips with the 0.25 s windows of `purify_relearn_encoder_crop_s`.
            0: off; models without such an encoder (the MFCC networks) skip it.
        purify_relearn_encoder_learning_rate (`float`, *optional*, defaults to `0.005`):
            Adam's learning rate for the re-learning (cosine decay to 0).
        purify_relearn_encoder_mix (`float`, *optional*, defaults to `0.5`):
            Each re-learning clip is mixed with another, time-shifted clip at a random weight up to this.
        purify_relearn_encoder_crop_s (`float`, *optional*, defaults to `0.25`):
            Each re-learning step takes a random window of this many seconds of every (mixed) clip, the same window
            for the whole batch; 0 keeps whole clips. The encoder is convolutional, so a window teaches it the same
            function from fewer samples. Measured on the small grid's tiny Wav2Vec2 noise-burst suspect
            (`benchmarks/relearning_probe.py`, docs/lasting.md): 3,000 steps on 0.25 s windows reach a relative
            error of 0.040 on whole validation clips, 1,500 steps on whole clips 0.063.
        purify_relearn_upper_steps (`int`, *optional*, defaults to `0`):
            After the encoder's re-learning (if on), the backbone's layers above it (feature projection, positional
            convolution, transformer layers) are re-initialised and trained for this many steps, the encoder frozen,
            to reproduce the suspect's hidden states on the clean clips
            ([`hf_gnft.defenses.encoder_relearning.relearn_upper_layers`]); the classification head is kept. For
            triggers the re-learned encoder still hears (a pitch shift, a style), whose pathway is downstream of it.
            Probes (docs/lasting.md): it cut retuning on tiny Wav2Vec2 PBSM at 1,000 clean clips (20.0 / 37.8% →
            3.4 / 12.9%) and tiny HuBERT PBSM at 200 (26.1% → 3.0%), at 1.2–2.4 more validation points on three
            probes of four, and made tiny Wav2Vec2 PBSM at 200 clips worse. 0: off; models without a convolutional
            waveform encoder skip it.
        purify_relearn_upper_learning_rate (`float`, *optional*, defaults to `0.001`):
            Adam's learning rate for re-learning the upper layers (cosine decay to 0).
        purify_burst_every_start (`bool`, *optional*, defaults to `True`):
            The burst surrogate is one pattern at every window start (every 0.05 s, each copy carrying one in turn),
            not one pattern where the search points. A backdoor keyed to a sound at one place is not found by the
            search: on `make demo`'s suspect the true noise burst fires at 0.05 s (90%) and nowhere from 0.2 s on,
            while an optimised pattern reaches the target from everywhere, most easily at the clip's ends (the
            search picked 0.8 s). Unlearning the pattern at 0.8 s relapsed to 12–16% ASR after a clean fine-tune;
            at the trigger's own place, 2–5% (issue 26).
        purify_spectral_every_shift (`bool`, *optional*, defaults to `False`):
            The spectral surrogate's triggered copies each carry one pitch shift in turn, every nonzero semitone up
            to `purify_max_semitones` either way, followed by the inverted filter, instead of the one shift the
            search found: the analogue of `purify_burst_every_start` for pitch-shift triggers, whose search finds the
            easiest shift rather than the trigger's (on the grid's PBSM suspect, +5 semitones, the search found +10
            and +11). Off by default: measured there at lr 0.02 (seeds 0 / 1, docs/lasting.md) it took the ASR from
            9.1 / 13.9% to 3.6 / 1.9% and the relapse check's worst from 29.0 / 22.9% to 18.6 / 13.9%, but
            retuning went 43.3 → 55.9% and 71.7 → 31.3% (the model never poisoned: 0.3 / 3.3%) and the validation
            drop 2.0 → 2.4 and 1.4 → 5.6 points: two seeds do not make it a default.
        purify_window_s (`float`, *optional*, defaults to `0.2`):
            The shape families' window, in seconds (the reference noise burst's and tone's length).
        purify_level_db (`float`, *optional*, defaults to `-15.0`):
            The shape families' largest energy in the window, in dB re the (normalised) clip: −15 dB holds the
            reference noise burst (−15 dB) and tone (−20 dB).
        purify_radius (`float`, *optional*, defaults to `0.02`):
            The additive inversion's L2 radius over the square root of the clip length, when unlearning.
        purify_max_gain_db (`float`, *optional*, defaults to `12.0`):
            The spectral inversion's largest filter gain or cut, in dB.
        purify_max_semitones (`int`, *optional*, defaults to `12`):
            The spectral inversion's largest pitch shift, in semitones either way.
        purify_steps (`int`, *optional*, defaults to `60`):
            Optimisation steps of each additive inversion when unlearning.
        purify_shape_steps (`int`, *optional*, defaults to `60`):
            Optimisation steps of each shape inversion (`purify_shapes`); with `purify_burst_every_start` each
            window start gets a third of them.
        purify_filter_steps (`int`, *optional*, defaults to `30`):
            Optimisation steps of each spectral inversion's filter when unlearning (after the pitch search).
        purify_rounds (`int`, *optional*, defaults to `3`):
            Rounds of unlearning; the triggers are inverted again against the current model before each.
        purify_shape_rounds (`int`, *optional*, defaults to `1`):
            The rounds when every unlearned trigger is a shape (a burst or a tone): a burst at every window start
            already covers where a trigger can be, and on `make demo`'s suspect one round lasted as well as three
            (relapse ASR 7.9 / 5.1% against 6.2 / 4.8%, retuned 10.3 against 7.3%) in 96 s instead of 177 s.
        purify_mix_ratio (`float`, *optional*, defaults to `2.0`):
            Triggered copies per clean clip in the training set (twice as many as clean clips: each of the burst's
            17 window starts gets more copies; measured above, `purify_repair_epochs`).
        purify_detection_radius (`float`, *optional*, defaults to `0.01`):
            The additive radius of the detection (the scan's).
        purify_detection_steps (`int`, *optional*, defaults to `20`):
            Optimisation steps of each class's additive detection inversion (the scan's); the spectral detection is
            the pitch search alone.
        purify_detection_threshold (`float`, *optional*, defaults to `0.1346`):
            A class is a suspected target when an additive inversion gap above the median class exceeds this (the
            scan's calibrated threshold at the detection settings).
        purify_spectral_threshold (`float`, *optional*, defaults to `0.5`):
            The same for the spectral family's gap (measured: 0.33 on a noise-burst suspect, whose target the
            additive family names, against 0.59 and 0.88 on style and PBSM suspects).
        purify_max_targets (`int`, *optional*, defaults to `1`):
            The most suspected classes unlearned (largest margin over its threshold first). On a style suspect a
            second, wrong class (an additive gap of 0.33) cost 2.7 more points of CA and left ASR 8% instead of 0%.
        purify_candidates (`int`, *optional*, defaults to `3`):
            Per family, the classes (at most this many) whose detection gap exceeds the threshold are inverted again
            at the unlearning budget, and the most successful becomes the target: the detection's largest gap alone
            named a wrong class first in 3 of 11 detections on tiny Wav2Vec2 suspects.
        purify_confirm_success (`float`, *optional*, defaults to `0.7`):
            The held-out success a suspected target's refined inversion must reach to count as a backdoor found. Below
            it purify still unlearns the target but says the detection was weak (`info["weak_detection"]`, a warning,
            the card): the backdoor may have been missed. Every target found on the benchmarks' suspects reached
            0.81-1.0; on a tiny Wav2Vec2 PBSM suspect whose backdoor answers the pitch shift and the click only
            together, the wrong classes purify took reached 0.39-0.49 (docs/lasting.md).
        purify_unlearn (`str`, *optional*, defaults to `"flagged"`):
            `"flagged"`: each suspected target is inverted and unlearned with the families whose gap named it;
            `"all"`: with every family of `purify_families`.
        purify_inversion_clips (`int`, *optional*, defaults to `128`):
            Clean clips (drawn with `seed`) the inversions use: the first batch of each class's other-class clips is
            optimised on, the rest measure success.
        purify_objective (`str`, *optional*, defaults to `"true_label"`):
            The loss of a triggered copy: `"true_label"`, cross-entropy on its true label (I-BAU's, BTI-DBF(U)'s);
            `"avoid_target"`, −log(1 − p(target)): only stop answering the suspected target. Measured on the tiny
            Wav2Vec2 noise-burst suspect (seed 0, lr 0.01): 92.7 / 0.0 against 92.0 / 0.4 (CA / ASR %), no gain.
        purify_distillation (`float`, *optional*, defaults to `0.5`):
            Weight w of a distillation from the frozen suspect while unlearning: each row's loss becomes (1 − w) ·
            its objective + w · T² · KL(suspect(the row's clean clip) ‖ model(row)). On `make demo`'s suspect of
            the time 0.5 cut the validation drop from −2.6 to −1.6 (docs/lasting.md); on the grid's noise-burst
            suspect from −3.2 to −2.8.
        purify_temperature (`float`, *optional*, defaults to `2.0`):
            The distillation's temperature T.
        purify_distillation_hides_target (`bool`, *optional*, defaults to `True`):
            Both distillations (`purify_distillation`, `purify_repair_distillation`) leave out the suspect's answer
            for the suspected target on clips of other classes: its logit there is set 20 below the clip's
            smallest, so the suspect's leaning to the target is not what the model is taught.
        purify_interpolation_step (`float`, *optional*, defaults to `0.0`):
            With a step > 0, after unlearning the weights walk back towards the suspect's, θ = θ_suspect + w ·
            (θ_purified − θ_suspect) for w = 1 − step, 1 − 2 · step, ..., as long as a fresh inversion of each
            suspected target (the rounds' settings, on the held-out clean clips of the detection) succeeds at most
            `purify_interpolation_tolerance` more than against the purified weights; the last such w is kept (clean
            data only). Off by default, because that inversion can miss what is left of a trigger. Measured (one
            seed, lr 0.01, CA / ASR % at w against w 1; benchmarks/purify_probe.py's suspects): tiny HuBERT PBSM
            88.7 / 5.9 at w 0.6 against 85.7 / 2.2; tiny Wav2Vec2 style 95.7 / 0.7 at 0.9 against 94.7 / 0.7; but
            on a tiny HuBERT tone suspect the inversion succeeded 2.2% at w 0.75 and 1.1% at w 0.9 while the ASR was
            50.9% and 16.4%, and on the planted-backdoor twin of the tests it found nothing down to w 0.5, where the
            ASR is 100%.
        purify_interpolation_tolerance (`float`, *optional*, defaults to `0.0`):
            How much more the re-inversion may succeed on an interpolated model than on the purified one.
        purify_interpolation_weight (`float`, *optional*, defaults to `1.0`):
            A fixed w in (0, 1]: the published weights are θ_suspect + w · (θ_trained − θ_suspect), the share of
            the training's change that is kept (also after the GN-FT fallback). The benchmark's knob beside the
            learning rate: unlike the walk it does not trust the re-inversion, and the defender's rule (the clean
            validation drop) chooses it. Not with `purify_interpolation_step` > 0.
    """

    num_train_epochs: float = field(
        default=20 / 3, metadata={"help": "Epochs over the mixed set (clean + triggered copies)."}
    )
    learning_rate: float = field(
        default=0.05, metadata={"help": "Peak learning rate (deep enough for the unlearning to last)."}
    )
    purify_families: list[str] = field(
        default_factory=lambda: list(DETECTION_FAMILIES),
        metadata={
            "help": f"Detection (and fallback unlearning) families: some of {', '.join(DETECTION_FAMILIES)}."
        },
    )
    purify_shapes: list[str] = field(
        default_factory=lambda: ["burst"],
        metadata={
            "help": f"Shape families a detected target is inverted with for a surrogate like the trigger: some of "
            f"{', '.join(LOCALISED_FAMILIES)} (none: the detection's families)."
        },
    )
    purify_shape_min_success: float = field(
        default=0.6,
        metadata={"help": "A shape inversion reaching this held-out success becomes the target's surrogate."},
    )
    purify_window_s: float = field(default=0.2, metadata={"help": "The shape families' window, in seconds."})
    purify_repair_epochs: float = field(
        default=20.0,
        metadata={
            "help": "Epochs of a plain fine-tune on the clean subset alone after unlearning (0: none)."
        },
    )
    purify_repair_learning_rate: float = field(
        default=0.01, metadata={"help": "The repair fine-tune's learning rate (the FT defense's)."}
    )
    purify_fallback_learning_rate: float | None = field(
        default=0.01,
        metadata={
            "help": "Learning rate of the GN-FT fallback when no class stands out (None: learning_rate)."
        },
    )
    purify_fallback_distillation: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the distillation from the frozen suspect's outputs on the clean clips during the "
            "GN-FT fallback (0: plain cross-entropy)."
        },
    )
    purify_repair_distillation: float = field(
        default=0.8,
        metadata={
            "help": "Weight of the distillation from the frozen suspect's outputs on the clean clips during the "
            "repair (0: plain cross-entropy)."
        },
    )
    purify_relearn_encoder_steps: int = field(
        default=3000,
        metadata={
            "help": "Steps re-learning the convolutional feature encoder from the suspect's encoder outputs on "
            "clean clips before unlearning; it stays frozen after (0: off)."
        },
    )
    purify_relearn_encoder_learning_rate: float = field(
        default=0.005, metadata={"help": "Adam's learning rate re-learning the feature encoder."}
    )
    purify_relearn_encoder_mix: float = field(
        default=0.5,
        metadata={"help": "Largest weight of the time-shifted clip mixed into each re-learning clip."},
    )
    purify_relearn_encoder_crop_s: float = field(
        default=0.25,
        metadata={
            "help": "Seconds of each clip (one random window per batch) a re-learning step sees (0: all)."
        },
    )
    purify_relearn_upper_steps: int = field(
        default=0,
        metadata={
            "help": "Steps of re-learning the backbone's layers above the feature encoder (projection, transformer) "
            "from the suspect's hidden states on the clean clips, after the encoder's re-learning if any (0: off)."
        },
    )
    purify_relearn_upper_learning_rate: float = field(
        default=0.001,
        metadata={"help": "Adam's learning rate for re-learning the upper layers (cosine decay to 0)."},
    )
    purify_burst_every_start: bool = field(
        default=True,
        metadata={
            "help": "Unlearn a burst at every window start (every 0.05 s), not only where its search points."
        },
    )
    purify_spectral_every_shift: bool = field(
        default=False,
        metadata={
            "help": "Unlearn the spectral surrogate's filter after every pitch shift (each nonzero semitone within "
            "purify_max_semitones, one per copy in turn), not only after the shift its search found."
        },
    )
    purify_level_db: float = field(
        default=-15.0,
        metadata={"help": "The shape families' largest level in the window, in dB re the clip."},
    )
    purify_radius: float = field(
        default=0.02, metadata={"help": "Additive inversion radius (L2 over sqrt(length)) when unlearning."}
    )
    purify_max_gain_db: float = field(
        default=12.0, metadata={"help": "Spectral inversion: largest filter gain or cut in dB."}
    )
    purify_max_semitones: int = field(
        default=12, metadata={"help": "Spectral inversion: largest pitch shift in semitones."}
    )
    purify_steps: int = field(default=60, metadata={"help": "Steps of each inversion when unlearning."})
    purify_shape_steps: int = field(
        default=60,
        metadata={"help": "Steps of each shape inversion (a third per window start with every start)."},
    )
    purify_filter_steps: int = field(
        default=30, metadata={"help": "Steps of the spectral inversion's filter when unlearning."}
    )
    purify_rounds: int = field(
        default=3, metadata={"help": "Unlearning rounds; the triggers are re-inverted before each."}
    )
    purify_shape_rounds: int = field(
        default=1,
        metadata={"help": "Unlearning rounds when every unlearned trigger is a shape (burst, tone)."},
    )
    purify_mix_ratio: float = field(
        default=2.0, metadata={"help": "Triggered copies per clean clip in the training set."}
    )
    purify_detection_radius: float = field(
        default=0.01, metadata={"help": "Additive radius of the detection inversion (the scan's)."}
    )
    purify_detection_steps: int = field(
        default=20, metadata={"help": "Steps of each class's detection inversion (the scan's)."}
    )
    purify_detection_threshold: float = field(
        default=DEFAULT_THRESHOLDS["additive"],
        metadata={"help": "Additive inversion gap over the median class that makes a class a suspect."},
    )
    purify_spectral_threshold: float = field(
        default=DEFAULT_THRESHOLDS["spectral"],
        metadata={"help": "Spectral inversion gap over the median class that makes a suspect."},
    )
    purify_max_targets: int = field(default=1, metadata={"help": "The most suspected classes unlearned."})
    purify_candidates: int = field(
        default=3, metadata={"help": "Candidate classes per family re-inverted at the unlearning budget."}
    )
    purify_confirm_success: float = field(
        default=0.7,
        metadata={
            "help": "Held-out success a suspected target's refined inversion must reach to count as a backdoor "
            "found; below it the record and the card say the detection was weak."
        },
    )
    purify_unlearn: str = field(
        default="flagged",
        metadata={
            "help": "'flagged': unlearn each target with the families that named it; 'all': every family."
        },
    )
    purify_inversion_clips: int = field(
        default=128, metadata={"help": "Clean clips the inversions use (drawn with seed)."}
    )
    purify_distillation: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the distillation from the frozen suspect's outputs on each row's clean clip "
            "(0: plain cross-entropy)."
        },
    )
    purify_distillation_hides_target: bool = field(
        default=True,
        metadata={
            "help": "Whether the distillations leave out the suspect's answer for the suspected target on clips of "
            "other classes (its leaning to the target is not taught)."
        },
    )
    purify_objective: str = field(
        default="true_label",
        metadata={
            "help": "Loss of a triggered copy: 'true_label' (cross-entropy on its true label) or 'avoid_target' "
            "(−log(1 − p(target)): only stop predicting the suspected target)."
        },
    )
    purify_temperature: float = field(
        default=2.0, metadata={"help": "Temperature of the distillation's softmaxes."}
    )
    purify_interpolation_step: float = field(
        default=0.0,
        metadata={
            "help": "Step of the walk back from the purified weights towards the suspect's while a fresh inversion "
            "succeeds no more than the tolerance above its success on the purified weights (0: no walk)."
        },
    )
    purify_interpolation_weight: float = field(
        default=1.0,
        metadata={"help": "Share w in (0, 1] of the training's weight change that is kept (1: all of it)."},
    )
    purify_interpolation_tolerance: float = field(
        default=0.0,
        metadata={"help": "The most a re-inversion may gain over the purified weights' along the walk back."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            check_inversion_settings(self.purify_radius, self.purify_steps, self.purify_max_gain_db,
                                     self.purify_max_semitones, self.purify_families, self.purify_window_s,
                                     self.purify_level_db)  # fmt: skip
            if any(family not in DETECTION_FAMILIES for family in self.purify_families):
                raise InversionError(f"purify_families are the detection's: some of {', '.join(DETECTION_FAMILIES)}"
                                     f", got {self.purify_families!r} (shapes go in purify_shapes)")  # fmt: skip
            shapes = self.purify_shapes
            if isinstance(shapes, str) or any(shape not in LOCALISED_FAMILIES for shape in shapes):
                raise InversionError(f"purify_shapes must be a list of some of {', '.join(LOCALISED_FAMILIES)}, got "
                                     f"{shapes!r}")  # fmt: skip
            if shapes:  # a repeated name: the inversion settings' own check ([] turns the shapes off)
                check_inversion_settings(families=shapes)
            check_inversion_settings(self.purify_detection_radius, self.purify_detection_steps)
            InversionSettings(filter_steps=self.purify_filter_steps)
        except InversionError as error:
            raise ValueError(str(error)) from None
        for name in (
            "purify_rounds",
            "purify_shape_rounds",
            "purify_max_targets",
            "purify_inversion_clips",
            "purify_candidates",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.purify_unlearn not in ("flagged", "all"):
            raise ValueError(f"purify_unlearn must be 'flagged' or 'all', got {self.purify_unlearn!r}")
        if self.purify_objective not in OBJECTIVES:
            raise ValueError(f"purify_objective must be one of {OBJECTIVES}, got {self.purify_objective!r}")
        for name in ("purify_distillation", "purify_repair_distillation", "purify_fallback_distillation"):
            weight = getattr(self, name)
            if not (is_finite_number(weight) and 0 <= weight <= 1):
                raise ValueError(f"{name} must be in [0, 1], got {weight!r}")
        temperature = self.purify_temperature
        if not (is_finite_number(temperature) and temperature > 0):
            raise ValueError(f"purify_temperature must be a finite number > 0, got {temperature!r}")
        step = self.purify_interpolation_step
        if not (is_finite_number(step) and 0 <= step < 1):
            raise ValueError(f"purify_interpolation_step must be in [0, 1), got {step!r}")
        tolerance = self.purify_interpolation_tolerance
        if not (is_finite_number(tolerance) and 0 <= tolerance < 1):
            raise ValueError(f"purify_interpolation_tolerance must be in [0, 1), got {tolerance!r}")
        weight = self.purify_interpolation_weight
        if not (is_finite_number(weight) and 0 < weight <= 1):
            raise ValueError(f"purify_interpolation_weight must be in (0, 1], got {weight!r}")
        if weight != 1 and step > 0:
            raise ValueError(
                "purify_interpolation_weight fixes the weight that purify_interpolation_step searches for: set one"
            )
        epochs, rate = self.purify_repair_epochs, self.purify_repair_learning_rate
        if not (is_finite_number(epochs) and epochs >= 0):
            raise ValueError(f"purify_repair_epochs must be a finite number >= 0, got {epochs!r}")
        if not (is_finite_number(rate) and rate > 0):
            raise ValueError(f"purify_repair_learning_rate must be a finite number > 0, got {rate!r}")
        for name in ("purify_shape_min_success", "purify_confirm_success"):
            share = getattr(self, name)
            if not (is_finite_number(share) and 0 < share <= 1):
                raise ValueError(f"{name} must be in (0, 1], got {share!r}")
        ratio = self.purify_mix_ratio
        if not (is_finite_number(ratio) and ratio > 0):
            raise ValueError(f"purify_mix_ratio must be a finite number > 0, got {ratio!r}")
        for name in ("purify_detection_threshold", "purify_spectral_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")

    def inversion_settings(self) -> InversionSettings:
        """The unlearning rounds' inversion settings."""
        return InversionSettings(list(self.purify_families), self.purify_steps, self.purify_radius,
                                 self.purify_max_gain_db, self.purify_max_semitones,
                                 self.purify_filter_steps, window_s=self.purify_window_s,
                                 level_db=self.purify_level_db,
                                 burst_every_start=self.purify_burst_every_start,
                                 shape_steps=self.purify_shape_steps)  # fmt: skip

    def detection_settings(self) -> InversionSettings:
        """The detection's inversion settings (the scan's additive radius and steps)."""
        return InversionSettings(list(self.purify_families), self.purify_detection_steps,
                                 self.purify_detection_radius, self.purify_max_gain_db,
                                 self.purify_max_semitones, filter_steps=0)  # fmt: skip

    def thresholds(self) -> dict[str, float]:
        return {"additive": self.purify_detection_threshold, "spectral": self.purify_spectral_threshold}


def detection_families(
    refined: list[dict[str, Any]], target: int, config: PurifyConfig, families: list[str] | None = None
) -> list[str]:
    """The families `target` is unlearned with before any shape: with `purify_unlearn="flagged"` those whose
    detection named it a candidate (a pitch-shift trigger is not unlearned as a noise, nor a noise as a pitch
    shift); with `"all"`, every family (of `families`, default `purify_families`: those that can invert the
    model)."""
    if config.purify_unlearn == "all":
        return list(config.purify_families if families is None else families)
    return list(dict.fromkeys(row["family"] for row in refined if row["target"] == target))


def shape_candidates(
    refined: list[dict[str, Any]], targets: list[int], config: PurifyConfig, families: list[str] | None = None
) -> list[int]:
    """The targets whose additive surrogate a shape may stand in for: those unlearned with the additive family and
    not named more strongly by the spectral one (see [`unlearning_plan`])."""
    return [t for t in targets if _shapeable(refined, t, detection_families(refined, t, config, families))]


def _shapeable(refined: list[dict[str, Any]], target: int, named: list[str]) -> bool:
    """Whether `target`, unlearned with the families `named`, may be unlearned with a shape instead: the additive
    family named it, and the pitch search did not, or reached it less often (refined success)."""
    if "additive" not in named:
        return False
    success = {row["family"]: row["success"] for row in refined if row["target"] == target}
    return "spectral" not in named or success.get("additive", 0.0) >= success.get("spectral", 0.0)


def unlearning_plan(
    refined: list[dict[str, Any]],
    targets: list[int],
    config: PurifyConfig,
    families: list[str] | None = None,
    shaped: list[dict[str, Any]] | None = None,
) -> list[tuple[int, str]]:
    """The (target, family) pairs each round inverts and unlearns. A target unlearned with the additive family whose
    shape inversions (`shaped`: rows of [`shape_suspects`]) reach `purify_shape_min_success` is unlearned with its
    most successful shape alone: a sound added to the clip, a short loud one or a tone like the trigger, rather than
    a faint perturbation over the whole clip, which costs accuracy on every class and leaves the real pathway in
    place (two shapes share the copies: on `make demo`'s suspect burst and tone together relapsed to 14.9% ASR after
    a clean fine-tune at lr 0.05, the burst alone to 9.1%). Any other target is unlearned with its
    [`detection_families`]. A target the spectral family named is not shaped unless the additive family reached it
    at least as often (refined success): a pitch shift is no added sound, while a strong burst backdoor can also be
    reached by a pitch shift and filter (the tests' planted burst is). On the grid's tiny Wav2Vec2 PBSM suspect (the
    pitch search alone named the target) a burst that reached the bar (0.60–0.61, against 0.81–0.95 for the pitch
    shift) left 10–22% ASR and 68–84% after retuning where unlearning the pitch shift had left 1–8%. On the tiny
    HuBERT PBSM suspect (seed 0, lr 0.05; both families named the target, spectral 0.97, additive 0.54, burst 0.66)
    the burst alone left 19.9% ASR, 26.4 / 15.9% after the relapse check and 81.0% after retuning; the two detection
    families 2.0%, 3.4 / 11.6% and 26.1% (validation accuracy 89.6 against the burst's 91.4 and the suspect's 93.6;
    the burst's row is the lasting grid's cell, the other `benchmarks/lasting_probe.py`'s, docs/lasting.md)."""
    plan = []
    for target in targets:
        named = detection_families(refined, target, config, families)
        shapes = [row for row in shaped or [] if row["target"] == target
                  and row["success"] >= config.purify_shape_min_success]  # fmt: skip
        # the most successful shape alone (the first of `purify_shapes` on a tie)
        if shapes and _shapeable(refined, target, named):
            plan.append((target, max(shapes, key=lambda row: row["success"])["family"]))
        else:
            plan += [(target, family) for family in named]
    return plan


def weak_detection(refined: list[dict[str, Any]], targets: list[int], bar: float) -> dict[str, Any] | None:
    """`{"best_success", "bar"}` when the most successful refined inversion of `targets` sends fewer than `bar` of
    the held-out clips to its class (a natural sink rather than a backdoor's target, or a trigger no family
    expresses); `None` when a target reaches it or there is no target."""
    best = max((row["success"] for row in refined if row["target"] in targets), default=None)
    if best is None or best >= bar:
        return None
    return {"best_success": float(best), "bar": float(bar)}


def unlearning_rounds(plan: list[tuple[int, str]], config: PurifyConfig) -> int:
    """`purify_shape_rounds` when every family of `plan` is a shape (burst, tone), else `purify_rounds`: the
    whole-clip surrogates need the later rounds' re-inversions (one round left 39–53% ASR on a noise-burst suspect),
    a burst at every start does not."""
    shapes_only = bool(plan) and all(family in LOCALISED_FAMILIES for _, family in plan)
    return config.purify_shape_rounds if shapes_only else config.purify_rounds


def shape_suspects(
    model: torch.nn.Module,
    extractor: Any,
    clips: Dataset,
    targets: list[int],
    config: PurifyConfig,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Every suspected target inverted with every shape family of `purify_shapes` the model can take, at the
    rounds' settings: rows `target`, `family`, `success` (held-out) and `trigger`, most successful first."""
    shapes = supported_families(model, config.purify_shapes) if config.purify_shapes else []
    if not shapes:
        return []
    return refine_suspects(model, extractor, clips, {shape: list(targets) for shape in shapes},
                           config.inversion_settings(), batch_size=batch_size)  # fmt: skip


class PurifyCollator(AudioClassificationCollator):
    """The audio collator, plus each row's `purify_trigger` mark (−1: a clean row; k ≥ 0: the k-th triggered
    copy) as a tensor the [`PurifyTrainer`] reads."""

    def __call__(self, rows):
        batch = super().__call__(rows)
        batch[TRIGGER_COLUMN] = torch.tensor(
            [int(row.get(TRIGGER_COLUMN, -1)) for row in rows], dtype=torch.long
        )
        return batch


class PurifyTrainer(GNFTTrainer):
    """[`GNFTTrainer`] whose marked rows carry the current inverted triggers (copy k gets trigger
    `k mod len(triggers)`), re-inverted against the model at the start of each round (rounds split the run's
    optimizer steps evenly).

    Args:
        plan: the (target class, inversion family) pairs to invert and unlearn.
        inversion_batches: target -> its other-class clean clips as model batches (the first is optimised on).
        settings: the inversion settings of every round.
        rounds: the number of rounds.
        normalize: whether the model's input is normalised per clip.
        sampling_rate: the input's sampling rate.
        initial_triggers: (target, family) -> a trigger already inverted against the model as it is at step 0 with
            `settings` (the detection's refinement), used for the first round instead of inverting it again.
        teacher_hides: classes whose logit the teacher's answer leaves out (20 below the row's smallest) on rows of
            other classes.
        every_shift: with n > 0, a spectral trigger's copy k is shifted by the (k // len(plan) mod 2n)-th nonzero
            semitone in [−n, n] before the trigger's filter, instead of by the trigger's own shift.
        teacher: the frozen suspect; with `distillation` > 0 the loss of every row is
            `(1 − distillation) · CE(true label) + distillation · T² · KL(teacher(clean clip) ‖ model(row))` at
            temperature `temperature`: a triggered copy is taught to answer as the suspect answers the clip
            without the trigger, and a clean row to keep the suspect's answer.
    """

    def __init__(
        self,
        *args: Any,
        plan: list[tuple[int, str]],
        inversion_batches: dict[int, list[dict]],
        settings: InversionSettings,
        rounds: int,
        normalize: bool = True,
        sampling_rate: int = 16_000,
        initial_triggers: dict[tuple[int, str], InvertedTrigger] | None = None,
        teacher: PreTrainedModel | None = None,
        distillation: float = 0.0,
        temperature: float = 2.0,
        objective: str = "true_label",
        teacher_hides: list[int] | tuple[int, ...] = (),
        every_shift: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.shifts = [s for s in range(-every_shift, every_shift + 1) if s != 0]
        self.objective = objective
        self.teacher_hides = list(teacher_hides)
        self.teacher = teacher if distillation > 0 else None
        self.distillation = float(distillation)
        self.temperature = float(temperature)
        self.initial_triggers = dict(initial_triggers or {})
        self.plan = list(plan)
        self.inversion_batches = inversion_batches
        self.inversion_settings = settings
        self.rounds = rounds
        self.normalize = normalize
        self.sampling_rate = sampling_rate
        self.triggers: list[InvertedTrigger] = []
        self.current_round: int | None = None
        self.round_log: list[dict[str, Any]] = []

    def round_at(self, step: int) -> int:
        """The round the optimizer step `step` belongs to."""
        return min(self.rounds - 1, step * self.rounds // max(self.state.max_steps, 1))

    def reinvert(self, round_index: int) -> None:
        """Invert every suspected target with every family against the current model (at step 0, take the
        `initial_triggers` there are: the model has not changed since they were inverted)."""
        started = time.perf_counter()
        model = self.accelerator.unwrap_model(self.model)
        reuse = self.initial_triggers if self.state.global_step == 0 else {}
        self.triggers = [
            reuse[(target, family)] if (target, family) in reuse
            else invert(model, self.inversion_batches[target], target, family, self.inversion_settings,
                        normalize=self.normalize, sampling_rate=self.sampling_rate)
            for target, family in self.plan
        ]  # fmt: skip
        self.current_round = round_index
        self.round_log.append(
            {
                "round": round_index,
                "step": self.state.global_step,
                "triggers": [t.describe() for t in self.triggers],
                "reused": sum((target, family) in reuse for target, family in self.plan),
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        logger.info(
            "Purify round %d: re-inverted %s",
            round_index,
            ", ".join(f"{t.family}->{t.target}: {100 * t.success:.0f}%" for t in self.triggers),
        )

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        marks = inputs.pop(TRIGGER_COLUMN)
        round_index = self.round_at(self.state.global_step)
        if round_index != self.current_round:
            self.reinvert(round_index)
        marked = marks >= 0
        name = input_name(self.accelerator.unwrap_model(model))
        if self.teacher is not None:
            inputs = {**inputs, TEACHER_KEY: self._teacher_logits(inputs)}
        if bool(marked.any()):
            values = inputs[name].clone()
            avoid = torch.full_like(inputs["labels"], -1) if self.objective == "avoid_target" else None
            for position, trigger in enumerate(self.triggers):
                rows = (marked & (marks % len(self.triggers) == position)).to(values.device)
                if not bool(rows.any()):
                    continue
                if avoid is not None:
                    avoid[rows.to(avoid.device) & (inputs["labels"] != trigger.target)] = trigger.target
                if trigger.family == "spectral":
                    groups = [(trigger.semitones, rows)]  # the search's shift, or each copy's shift in turn
                    if self.shifts:
                        copy_index = (marks // len(self.triggers)).to(values.device) % len(self.shifts)
                        groups = [(shift, rows & (copy_index == i)) for i, shift in enumerate(self.shifts)]
                    for semitones, chosen in groups:
                        if bool(chosen.any()):
                            shifted = pitch_shifted(values[chosen], semitones, self.sampling_rate)
                            values[chosen] = trigger.apply_to_shifted(shifted).detach().to(values.dtype)
                else:
                    values[rows] = trigger.apply(values[rows]).detach().to(values.dtype)
            inputs = {**inputs, name: values}
            if avoid is not None:
                inputs[AVOID_KEY] = avoid
        return super().training_step(model, inputs, num_items_in_batch)

    def _teacher_logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The frozen suspect's logits on the batch's clean clips (before any trigger is applied)."""
        device = self.args.device
        if next(self.teacher.parameters()).device != device:
            self.teacher = copy.deepcopy(self.teacher).to(device)  # the caller's model stays where it is
        training = self.teacher.training
        self.teacher.eval()
        with torch.no_grad():
            features = {k: v.to(device) for k, v in inputs.items() if k != "labels"}
            logits = self.teacher(**features).logits.detach().clone()
        self.teacher.train(training)
        labels = inputs["labels"].to(logits.device)
        for target in self.teacher_hides:  # the suspect's leaning to a suspected target is not taught
            rows = labels != target
            logits[rows, target] = logits[rows].min(dim=-1).values - 20.0
        return logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher_logits = inputs.pop(TEACHER_KEY, None)
        avoid = inputs.pop(AVOID_KEY, None)
        if teacher_logits is None and avoid is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits
        per_row = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        if avoid is not None and bool((avoid >= 0).any()):
            # −log(1 − p(target)) = logsumexp(all logits) − logsumexp(the other classes' logits)
            target = torch.nn.functional.one_hot(avoid.clamp(min=0), logits.shape[-1]).bool()
            others = torch.logsumexp(logits.masked_fill(target, float("-inf")), dim=-1)
            per_row = torch.where(avoid >= 0, torch.logsumexp(logits, dim=-1) - others, per_row)
        loss = per_row.mean()
        if teacher_logits is not None:
            t = self.temperature
            kl = torch.nn.functional.kl_div(
                torch.log_softmax(logits / t, dim=-1),
                torch.log_softmax(teacher_logits.to(logits.dtype) / t, dim=-1),
                log_target=True,
                reduction="batchmean",
            )
            loss = (1 - self.distillation) * loss + self.distillation * t * t * kl
        return (loss, outputs) if return_outputs else loss


def _check_classes(model: PreTrainedModel, clean: Dataset) -> None:
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if num_labels is not None and num_labels < 2:
        raise DefenseInputError(f"purify inverts a trigger towards a class: the model has {num_labels} class")
    present = sorted(set(int(label) for label in clean["label"]))
    if len(present) < 2:
        raise DefenseInputError(
            f"purify inverts triggers from clips of other classes: the clean subset has only class {present}"
        )


def interpolate_weights(
    model: torch.nn.Module,
    start: dict[str, torch.Tensor],
    end: dict[str, torch.Tensor],
    weight: float,
) -> None:
    """Load `start + weight · (end − start)` into `model` (floating-point entries; the others are taken from
    `end`)."""
    model.load_state_dict(
        {
            key: (start[key].to(value.device) + weight * (value - start[key].to(value.device)))
            if value.is_floating_point()
            else value
            for key, value in end.items()
        }
    )


def walk_back(
    suspect: torch.nn.Module,
    purified: torch.nn.Module,
    plan: list[tuple[int, str]],
    batches: dict[int, list[dict]],
    settings: InversionSettings,
    step: float,
    tolerance: float,
    *,
    normalize: bool = True,
    sampling_rate: int = 16_000,
) -> dict[str, Any]:
    """Move `purified` back towards `suspect` along the straight line between their weights (w = 1 − step,
    1 − 2 · step, ...) while a fresh inversion of every (target, family) of `plan` from `batches` (held-out clean
    clips) succeeds at most `tolerance` more than against the purified weights; `purified` ends at the last such
    w (1 when the first step back already fails).

    Returns:
        A record: `weight` (the kept w), `reference` (the inversion's largest success against the purified
        weights), `path` (each w tried with its success) and `seconds`.
    """
    started = time.perf_counter()

    def success() -> float:
        return max(
            invert(purified, batches[target], target, family, settings,
                   normalize=normalize, sampling_rate=sampling_rate).success
            for target, family in plan
        )  # fmt: skip

    end = {key: value.detach().clone() for key, value in purified.state_dict().items()}
    start = {key: value.detach() for key, value in suspect.state_dict().items()}
    reference = success()
    path = [{"weight": 1.0, "success": round(reference, 4)}]
    kept = 1.0
    index = 0
    while step > 0 and (weight := round(1.0 - (index := index + 1) * step, 6)) > 0:
        interpolate_weights(purified, start, end, weight)
        found = success()
        path.append({"weight": weight, "success": round(found, 4)})
        if found > reference + tolerance:
            break
        kept = weight
    interpolate_weights(purified, start, end, kept)
    return {"weight": kept, "reference": round(reference, 4), "tolerance": tolerance, "path": path,
            "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip


def mixed_training_set(clean: Dataset, ratio: float, seed: int) -> Dataset:
    """The clean subset (marked −1) plus `round(ratio · len(clean))` copies of its clips (drawn with `seed`,
    cycling when the ratio exceeds 1) marked 0, 1, 2, ... to carry the inverted triggers."""
    copies = int(round(ratio * len(clean)))
    order = np.random.default_rng(seed).permutation(len(clean))
    indices = [int(order[i % len(clean)]) for i in range(copies)]
    plain = clean.add_column(TRIGGER_COLUMN, [-1] * len(clean))
    triggered = clean.select(indices).add_column(TRIGGER_COLUMN, list(range(copies)))
    return concatenate_datasets([plain, triggered])


@dataclass
class ExactPurificationConfig(DefenseConfig):
    """Unlearning with the TRUE trigger ("exact purification", EP; Min et al., NeurIPS 2024): the number purification
    is measured against, for evaluation only (the benchmark's `oracle-ep`), never a product setting and never used
    to choose one. The benchmark fills in the attack's trigger and target for each cell.

    Args:
        num_train_epochs: 10 epochs over the clean subset plus one copy of each non-target clip with the true trigger
            (issue 26's EP): about as many GN-FT steps as purify's unlearning (120 against 133 on 200 clean clips),
            without purify's repair fine-tune.
        oracle_trigger: the attack's trigger (a `Trigger` spec as a mapping).
        oracle_target: the attack's target class id.
    """

    num_train_epochs: float = field(
        default=10.0, metadata={"help": "Epochs over the mixed set (about purify's unlearning steps)."}
    )
    oracle_trigger: dict | None = field(default=None, metadata={"help": "The attack's trigger spec."})
    oracle_target: int | None = field(default=None, metadata={"help": "The attack's target class id."})


def apply_exact_purification(
    model: PreTrainedModel,
    extractor: Any,
    clean: Dataset,
    config: ExactPurificationConfig,
    validation: Dataset | None = None,
) -> DefenseOutcome:
    """Evaluation only: GN-FT on the clean subset plus a copy of each of its non-target clips carrying the attack's
    TRUE trigger, with its true label (`config.oracle_trigger`, `config.oracle_target`), for purification's budget.
    What unlearning reaches when the surrogate is the trigger itself.

    Raises:
        UnsupportedModelError: no trigger (a model trained without poisoning has none to unlearn).
        DefenseInputError: an empty clean subset, or one whose every clip is of the target class.
    """
    from ..neurons import UnsupportedModelError
    from ..poison import PoisonError, make_triggered_eval_set

    check_clean_subset(clean, "oracle-ep")
    if config.oracle_trigger is None or config.oracle_target is None:
        raise UnsupportedModelError(
            "exact purification unlearns the attack's trigger, and this model has none"
        )
    try:
        copies = make_triggered_eval_set(clean, config.oracle_trigger, int(config.oracle_target))
    except PoisonError as error:
        raise DefenseInputError(f"oracle-ep: {error}") from None
    copies = copies.remove_columns([c for c in copies.column_names if c not in clean.column_names])
    mixed = concatenate_datasets([clean, copies.cast(clean.features)])
    defended = copy_model(model)
    trainer = fine_tune(defended, extractor, mixed, config, trainer_class=GNFTTrainer)
    defended.eval()
    return DefenseOutcome(
        defended,
        {
            "defense": "oracle-ep",
            "triggered_copies": len(copies),
            "steps": trainer.state.global_step,
            "log_history": list(trainer.state.log_history),
        },  # fmt: skip
    )


def _relearning_crop(model: torch.nn.Module, extractor: Any, config: PurifyConfig) -> int | None:
    """The encoder re-learning's window in samples (`None`: whole clips, or no re-learning), checked against the
    model's encoder."""
    encoder = feature_encoder(model)
    if (
        config.purify_relearn_encoder_steps == 0
        or config.purify_relearn_encoder_crop_s == 0
        or encoder is None
    ):
        return None
    crop = max(1, round(config.purify_relearn_encoder_crop_s * model_input(model, extractor)[2]))
    try:
        check_crop(encoder, crop, torch.zeros(1, crop))
    except ValueError as error:  # hf-gnft's own input error: the command line prints it as one line
        raise DefenseInputError(
            f"purify_relearn_encoder_crop_s={config.purify_relearn_encoder_crop_s:g}: {error}"
        ) from None
    return crop


def _clean_fine_tune(
    defended: PreTrainedModel,
    suspect: PreTrainedModel,
    extractor: Any,
    clean: Any,
    config: PurifyConfig,
    distillation: float,
    teacher_hides: list[int] | tuple[int, ...] = (),
) -> Any:
    """GN-FT as `config` sets it (the fallback, or the repair with `gn_alpha` 0) on the clean subset alone: no
    marked rows. With `distillation` > 0 the frozen `suspect` teaches every clip too ([`PurifyTrainer`]), its
    answer for the classes `teacher_hides` left out. Returns the trainer."""
    if distillation <= 0:
        return fine_tune(defended, extractor, clean, config, trainer_class=GNFTTrainer)
    return fine_tune(defended, extractor, clean, config, trainer_class=PurifyTrainer,
                     data_collator=PurifyCollator(extractor), plan=[], inversion_batches={},
                     settings=config.inversion_settings(), rounds=1, teacher=suspect, distillation=distillation,
                     temperature=config.purify_temperature, teacher_hides=teacher_hides)  # fmt: skip


def apply_purify(
    model: PreTrainedModel,
    extractor: Any,
    clean: Dataset,
    config: PurifyConfig | None = None,
    validation: Dataset | None = None,
) -> DefenseOutcome:
    """Purify a copy of `model` (see the module docs); `model` itself is left unchanged. The detection inverts
    every class on `validation` (held-out clean clips; the clean subset when there is none, or it has one class);
    the rounds' inversions use the clean subset.

    Returns:
        A [`DefenseOutcome`] whose `info` holds the detection (every class's inversion success and each family's
        gap), the suspected targets, each round's inverted triggers, the steps, the training log and the wall
        time of each part (`seconds`: detection, refinement, training, and the rounds' inversions within it);
        `fallback` is `"gn-ft"` when no class was suspected.

    Raises:
        DefenseInputError: the clean subset is empty or has one class, or the model has one class.
    """
    config = config if config is not None else PurifyConfig()
    if not isinstance(config, PurifyConfig):
        raise TypeError(f"apply_purify needs a PurifyConfig, got {type(config).__name__}")
    check_clean_subset(clean, DEFENSE_NAME)
    _check_classes(model, clean)
    defended = copy_model(model)

    def draw(dataset: Dataset) -> Dataset:
        if len(dataset) > config.purify_inversion_clips:
            return dataset.shuffle(seed=config.seed).select(range(config.purify_inversion_clips))
        return dataset

    crop = _relearning_crop(
        model, extractor, config
    )  # a window the encoder cannot take fails before any work
    clips = draw(clean)
    # Detection prefers held-out clean clips: the suspect was trained on the clean subset's clips and is more
    # confident on them, which hides its target (measured on a noise-burst suspect: gap 0.42 towards a wrong class
    # on training-split clips, 0.55 towards the true one on validation clips).
    held_out = validation is not None and len(validation) > 0 and len(set(validation["label"])) > 1
    detection_clips = draw(validation) if held_out else clips
    started = time.perf_counter()
    detection = invert_classes(defended, extractor, detection_clips, config.detection_settings(),
                               batch_size=config.per_device_train_batch_size)  # fmt: skip
    candidates = candidate_classes(detection, config.thresholds(), config.purify_candidates)
    detected = time.perf_counter()
    refined = refine_suspects(defended, extractor, detection_clips, candidates, config.inversion_settings(),
                              batch_size=config.per_device_train_batch_size, detection=detection)  # fmt: skip
    seconds = {"detection": detected - started, "refinement": time.perf_counter() - detected}
    targets = list(dict.fromkeys(row["target"] for row in refined))[: config.purify_max_targets]
    families = supported_families(defended, config.purify_families)
    shaped = shape_suspects(defended, extractor, detection_clips, shape_candidates(refined, targets, config, families),
                            config, batch_size=config.per_device_train_batch_size)  # fmt: skip
    seconds["shapes"] = time.perf_counter() - detected - seconds["refinement"]
    plan = unlearning_plan(refined, targets, config, families, shaped)
    # the classes whose logit the distillations' teacher leaves out
    hidden = targets if config.purify_distillation_hides_target else []
    info: dict[str, Any] = {
        "defense": DEFENSE_NAME,
        "detection": detection.describe(),
        "detection_clips": "validation" if held_out else "clean subset",
        "thresholds": config.thresholds(),
        "candidates": candidates,
        "refined": [{k: v for k, v in row.items() if k != "trigger"} for row in refined],
        "shapes": [row["trigger"].describe() for row in shaped],
        "targets": targets,
        "plan": [[target, family] for target, family in plan],
        "target_names": [model.config.id2label[t] for t in targets] if hasattr(model, "config") else targets,
        "fallback": None,
        "weak_detection": weak_detection(refined, targets, config.purify_confirm_success),
    }
    if info["weak_detection"] is not None:
        logger.warning(
            "Purify: the strongest inverted trigger sends only %.0f%% of held-out clean clips to its class, below "
            "purify_confirm_success %.0f%%: the class may not be the backdoor's target, and the backdoor may remain",
            100 * info["weak_detection"]["best_success"],
            100 * config.purify_confirm_success,
        )
    if not targets:
        # nothing stands out: no unlearning, GN-FT with the same number of steps (the mixed set's)
        budget = copy.deepcopy(config)
        budget.num_train_epochs = config.num_train_epochs * (1 + config.purify_mix_ratio)
        if config.purify_fallback_learning_rate is not None:
            budget.learning_rate = config.purify_fallback_learning_rate
        logger.info("Purify: no class stands out in the inversion; running GN-FT with the same budget")
        # nothing is hidden from the teacher: no class stood out
        trainer = _clean_fine_tune(
            defended, model, extractor, clean, budget, config.purify_fallback_distillation
        )
        info["fallback"] = "gn-ft"
        info["fallback_learning_rate"] = budget.learning_rate
        info["fallback_distillation"] = config.purify_fallback_distillation
    else:
        batching, normalize, rate = model_input(defended, extractor)
        relearning = (config.purify_relearn_encoder_steps, config.purify_relearn_upper_steps)
        if any(steps > 0 for steps in relearning) and feature_encoder(defended) is not None:
            relearn_batches = list(
                audio_batches(clean, extractor, config.per_device_train_batch_size, **batching)
            )
            if config.purify_relearn_encoder_steps > 0:
                info["encoder_relearning"] = relearn_feature_encoder(
                    defended, model, relearn_batches, steps=config.purify_relearn_encoder_steps,
                    learning_rate=config.purify_relearn_encoder_learning_rate,
                    mix=config.purify_relearn_encoder_mix, crop=crop, normalize=normalize, seed=config.seed,
                )  # fmt: skip
            if config.purify_relearn_upper_steps > 0:
                info["upper_relearning"] = relearn_upper_layers(
                    defended, model, relearn_batches, steps=config.purify_relearn_upper_steps,
                    learning_rate=config.purify_relearn_upper_learning_rate, mix=config.purify_relearn_encoder_mix,
                    normalize=normalize, seed=config.seed,
                )  # fmt: skip
            seconds["relearning"] = sum(
                info[key]["seconds"] for key in ("encoder_relearning", "upper_relearning") if key in info
            )
        inversion_batches = {
            target: class_batches(clips, extractor, target, config.per_device_train_batch_size, **batching)
            for target in targets
        }
        mixed = mixed_training_set(clean, config.purify_mix_ratio, config.seed)
        trainer = fine_tune(
            defended,
            extractor,
            mixed,
            config,
            trainer_class=PurifyTrainer,
            data_collator=PurifyCollator(extractor),
            plan=plan,
            inversion_batches=inversion_batches,
            settings=config.inversion_settings(),
            rounds=unlearning_rounds(plan, config),
            normalize=normalize,
            sampling_rate=rate,
            # the refinement inverted the targets at the rounds' settings against the unchanged model: round 0
            initial_triggers={(row["target"], row["family"]): row["trigger"] for row in [*refined, *shaped]},
            teacher=model,
            distillation=config.purify_distillation,
            temperature=config.purify_temperature,
            objective=config.purify_objective,
            teacher_hides=hidden,
            every_shift=config.purify_max_semitones if config.purify_spectral_every_shift else 0,
        )
        info["rounds"] = trainer.round_log
        if config.purify_interpolation_step > 0:
            held_out_batches = {
                target: class_batches(
                    detection_clips, extractor, target, config.per_device_train_batch_size, **batching
                )  # fmt: skip
                for target in targets
            }
            info["interpolation"] = walk_back(
                model, defended, plan, held_out_batches, config.inversion_settings(),
                config.purify_interpolation_step, config.purify_interpolation_tolerance,
                normalize=normalize, sampling_rate=rate,
            )  # fmt: skip
    if config.purify_interpolation_weight < 1:
        trained = {key: value.detach().clone() for key, value in defended.state_dict().items()}
        suspect = {key: value.detach() for key, value in model.state_dict().items()}
        interpolate_weights(defended, suspect, trained, config.purify_interpolation_weight)
        info["interpolation"] = {"weight": config.purify_interpolation_weight, "fixed": True}
    seconds["interpolation"] = info.get("interpolation", {}).get("seconds", 0.0)
    seconds["repair"] = 0.0
    if config.purify_repair_epochs > 0 and targets:
        repair_started = time.perf_counter()
        if "encoder_relearning" in info:
            set_encoder_trainable(defended, False)  # the repair must not teach the suspect's encoder back
        repair = copy.deepcopy(config)
        repair.gn_alpha = 0.0
        repair.learning_rate = config.purify_repair_learning_rate
        repair.num_train_epochs = config.purify_repair_epochs
        repair.max_steps, repair.resume_from_checkpoint = -1, None
        repaired = _clean_fine_tune(defended, model, extractor, clean, repair, config.purify_repair_distillation,
                                    teacher_hides=hidden)  # fmt: skip
        info["repair"] = {"steps": repaired.state.global_step, "learning_rate": repair.learning_rate,
                          "epochs": repair.num_train_epochs,
                          "distillation": config.purify_repair_distillation}  # fmt: skip
        seconds["repair"] = time.perf_counter() - repair_started
    if "encoder_relearning" in info:
        set_encoder_trainable(defended, True)  # the published model trains like any other
    seconds.setdefault("relearning", 0.0)
    seconds["training"] = (
        time.perf_counter()
        - started
        - seconds["detection"]
        - seconds["refinement"]
        - seconds["shapes"]
        - seconds["relearning"]
        - seconds["interpolation"]
        - seconds["repair"]
    )
    seconds["round_inversions"] = sum(entry.get("seconds", 0.0) for entry in info.get("rounds", []))
    info["seconds"] = {key: round(value, 2) for key, value in seconds.items()}
    info["steps"] = trainer.state.global_step
    info["log_history"] = list(trainer.state.log_history)
    defended.eval()
    return DefenseOutcome(defended, info)
