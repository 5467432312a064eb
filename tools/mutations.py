"""Mutation check: does a planted one-line fault in a recipe's wiring break a fast test?

Each mutant below is one textual change (a sign, a swapped argument, a dropped detach, weight or scale)
applied to a scratch copy of the checkout; the tests it names are run there with `pytest -x`. A mutant
is *killed* when a test fails; a *survivor* is a fault the suite would let through. The unmutated copy
must pass the same tests first, so a kill always means the fault was seen.

    python tools/mutations.py                         # all mutants -> tools/results/mutations.json
    python tools/mutations.py --only dmd2_gan_sign    # some of them, report printed only

A new recipe adds its faults here (which prediction goes where, signs, weights, detaches, noise scales)
together with the tests that pin them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tools" / "results" / "mutations.json"

RECORDED = "tests/test_recorded_losses.py"
EVALUATE_EXPORTS = "tests/test_evaluate_exports.py"
WIRING = "tests/recipes/test_config_wiring.py::test_changing_the_key_changes_what_the_run_does"
RESUME = "tests/recipes/test_resume_rule.py"
FOLDER = "tests/recipes/test_run_folder.py"
SHARDING = "tests/test_sharding.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # file, relative to the checkout
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest arguments, relative to the checkout
    fault: str  # what the change means


MUTANTS = [
    # DMD2 (recipes/dmd2.py)
    Mutant("dmd2_real_fake_swapped", "stepdistill/training/dmd.py", "losses.dmd_loss(x, x0_real, x0_fake)",
           "losses.dmd_loss(x, x0_fake, x0_real)", (f"{RECORDED}::test_short_run_logs_the_recorded_losses[dmd2]",),
           "real and fake score swapped in the generator step"),
    Mutant("dmd2_fake_step_not_detached", "stepdistill/training/dmd.py",
           "*generator_loss(run, view, x, labels, gan=gan), x.detach(), labels)",
           "*generator_loss(run, view, x, labels, gan=gan), x, labels)",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[dmd2:shared]",),
           "the fake-score step's generator samples keep their graph (the official order shares them)"),
    Mutant("dmd2_fake_times_uniform", "stepdistill/training/dmd.py", "t = draw.times(fake_score_times(cfg.loss.fake_times), schedule)",
           "t = draw.times(UniformTime(), schedule)", (f"{RECORDED}::test_short_run_logs_the_recorded_losses[dmd2]",),
           "the fake score trained uniformly in time instead of at the teacher's levels"),
    Mutant("dmd2_order_ignored", "stepdistill/training/dmd.py",
           'if run.cfg.loss.fake_samples == "shared" and generator_turn:', 'if False:', (f"{RECORDED}::test_short_run_logs_the_recorded_losses[dmd2:shared]",),
           "the official order (generator first, shared samples) ignored"),
    Mutant("dmd2_time_range_reversed", "stepdistill/training/dmd.py",
           "DiscreteRange(cfg.loss.min_step, cfg.loss.max_step, inclusive=True)",
           "DiscreteRange(cfg.loss.max_step, cfg.loss.min_step, inclusive=True)",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[dmd2]",), "DMD's time range reversed"),
    Mutant("dmd2_generator_null_labels", "stepdistill/training/dmd.py",
           "cond, uncond = conditioner.cond(labels), conditioner.uncond(labels)",
           "cond, uncond = conditioner.uncond(labels), conditioner.uncond(labels)",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[dmd2]",),
           "the generator step's scores see the null label"),
    Mutant("dmd2_fake_weight_dropped", "stepdistill/training/dmd.py",
           "losses.denoising_loss(run.fake_score(x_t, t, **conditioner.cond(labels)), x, weight)",
           "losses.denoising_loss(run.fake_score(x_t, t, **conditioner.cond(labels)), x)",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[dmd2]",), "the fake-score loss weight dropped"),
    Mutant("dmd2_gan_sign", "stepdistill/training/dmd.py", "loss = loss + run.gan_weight.value * loss_g",
           "loss = loss - run.gan_weight.value * loss_g",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[dmd2]",), "the GAN generator loss's sign flipped"),
    Mutant("dmd2_discriminator_sides_swapped", "stepdistill/training/dmd.py",
           "logits_real, logits_fake = run.head(features).chunk(2)",
           "logits_fake, logits_real = run.head(features).chunk(2)",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[dmd2]",), "the discriminator's real and fake swapped"),
    # SiD / SIM (recipes/sid.py, recipes/sim.py)
    Mutant("sid_real_fake_swapped", "recipes/sid.py", "losses.sid_loss(x, x0_real, x0_fake, run.cfg.loss.alpha)",
           "losses.sid_loss(x, x0_fake, x0_real, run.cfg.loss.alpha)",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[sid]",), "real and fake score swapped in SiD's loss"),
    Mutant("implicit_real_fake_swapped", "stepdistill/training/implicit.py",
           "loss = generator_loss(x, x0_real, x0_fake, t)", "loss = generator_loss(x, x0_fake, x0_real, t)",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[sim]",),
           "real and fake score swapped in the SiD / SIM generator step"),
    Mutant("sid_x_t_detached", "stepdistill/training/implicit.py",
           "x_t = schedule.add_noise(x, draw.randn(*run.setup.shape), t)  # not detached",
           "x_t = schedule.add_noise(x.detach(), draw.randn(*run.setup.shape), t)  # not detached",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[sid]",),
           "SiD's gradient through the networks' activations cut"),
    Mutant("implicit_eps_weighting_ignored", "stepdistill/training/implicit.py",
           'kind = "epsilon" if cfg.loss.fake_weighting == "eps" else run.setup.teacher.prediction_type',
           "kind = run.setup.teacher.prediction_type",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[sid:official]",),
           "SiD-LSG's eps-MSE fake loss replaced by the v-prediction teacher's native one"),
    Mutant("implicit_fresh_batch_ignored", "stepdistill/training/implicit.py",
           'if run.cfg.loss.fake_samples == "fresh":', "if False:",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[sid:official]",),
           "the official second batch for the fake score ignored"),
    Mutant("sim_weighting_ignored", "recipes/sim.py", "return sim(x, x0_real, x0_fake, c, weight=weight)",
           "return sim(x, x0_real, x0_fake, c)",
           ("tests/test_sid_sim_swiftbrush_recipes.py::test_sim_generator_loss_weightings",),
           "SIM's per-sample weighting option ignored"),
    Mutant("sim_fixed_direction_residual", "stepdistill/losses/sim.py", "return weighted_mean((u * (f - x).flatten(1)).sum(1), weight, x)",
           "return weighted_mean((u * (r - x).flatten(1)).sum(1), weight, x)",
           ("tests/test_sid_sim_swiftbrush_recipes.py::test_sim_generator_loss_weightings",),
           "SIM's fixed-direction form with the real score's residual"),
    # SwiftBrush (recipes/swiftbrush.py)
    Mutant("swiftbrush_vsd_weight", "recipes/swiftbrush.py", "weight = schedule.alpha(t) * schedule.sigma(t)",
           "weight = schedule.sigma(t) ** 2", (f"{RECORDED}::test_short_run_logs_the_recorded_losses[swiftbrush]",),
           "the VSD time weight changed (eps-space sigma^2 used in x0 units)"),
    Mutant("swiftbrush_real_fake_swapped", "recipes/swiftbrush.py",
           "losses.vsd_loss(x, real_c, real_u, fake_c, fake_u,", "losses.vsd_loss(x, fake_c, fake_u, real_c, real_u,",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[swiftbrush]",), "teacher and LoRA swapped in VSD"),
    # Consistency distillation (recipes/consistency_distill.py)
    Mutant("cd_target_at_start_time", "recipes/consistency_distill.py",
           "target = target_net(x_prev, end.float(), **cond)", "target = target_net(x_prev, start.float(), **cond)",
           ("tests/test_consistency_recipes.py::test_distillation_step_is_lcm_s_loss_and_moves_the_ema_target[l2]",),
           "the target network evaluated at the student's time instead of the teacher step's end"),
    Mutant("cd_target_from_x", "recipes/consistency_distill.py",
           "target = target_net(x_prev, end.float(), **cond)", "target = target_net(x, end.float(), **cond)",
           ("tests/test_consistency_recipes.py::test_distillation_step_is_lcm_s_loss_and_moves_the_ema_target[l2]",),
           "the target skips the teacher's solver step"),
    Mutant("cd_teacher_step_reversed", "recipes/consistency_distill.py",
           "solver_schedule(run.cfg, s), x, start, end)", "solver_schedule(run.cfg, s), x, end, start)",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[consistency_distill]",),
           "the teacher's step taken upwards in noise"),
    Mutant("cd_guidance_to_cfg_shifted", "recipes/consistency_distill.py",
           "return guided(run.teacher, lcm_guidance_to_cfg(w), run.setup.conditioner, labels)",
           "return guided(run.teacher, w, run.setup.conditioner, labels)",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[consistency_distill:guided]",),
           "LCM's w used as the CFG scale (guidance one step weaker)"),
    Mutant("cfg_guidance_sign", "stepdistill/guidance.py", "return x0_uncond + scale * (x0_cond - x0_uncond)",
           "return x0_uncond - scale * (x0_cond - x0_uncond)",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[consistency_distill:guided]",),
           "classifier-free guidance pointing away from the condition"),
    Mutant("cd_ema_rate_inverted", "recipes/consistency_distill.py",
           "ema_update(run.target, run.setup.unwrap(run.generator), mu)",
           "ema_update(run.target, run.setup.unwrap(run.generator), 1 - mu)",
           ("tests/test_consistency_recipes.py::test_distillation_step_is_lcm_s_loss_and_moves_the_ema_target[l2]",),
           "the EMA target's rate inverted"),
    Mutant("cd_segment_jump_dropped", "recipes/consistency_distill.py",
           "online = seg.jump(x, start, online)", "online = online",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[consistency_distill:mlcm]",),
           "MLCM's student compared as x0 instead of jumped to its segment's edge"),
    Mutant("cd_segment_edge_ignored", "recipes/consistency_distill.py",
           "at_edge = end.double() <= seg.lower_edge(start)", "at_edge = level < 0",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[consistency_distill:mlcm]",),
           "a segment's lower edge not taken as x_prev itself"),
    Mutant("cd_metric_ignored", "recipes/consistency_distill.py", 'if lo.metric == "huber":', "if False:",
           ("tests/test_consistency_recipes.py::test_distillation_step_is_lcm_s_loss_and_moves_the_ema_target[huber]",),
           "LCM's Huber replaced by L2"),
    # ECT / iCT (recipes/ect.py)
    Mutant("ect_fresh_target_noise", "recipes/ect.py", "(s.schedule.add_noise(x, eps, r), r, **cond)",
           "(s.schedule.add_noise(x, torch.randn_like(eps), r), r, **cond)",
           ("tests/test_consistency_recipes.py::test_ect_step_is_the_official_loss_with_shared_noise",),
           "the target noised with its own noise instead of the online pass's"),
    Mutant("ect_weight_dropped", "recipes/ect.py", "losses.pseudo_huber_loss(online, target, c, weight.to(s.device))",
           "losses.pseudo_huber_loss(online, target, c)",
           ("tests/test_consistency_recipes.py::test_ect_step_is_the_official_loss_with_shared_noise",),
           "ECT's 1 / (t - r) weighting dropped"),
    Mutant("ect_target_with_gradient", "recipes/ect.py", "with torch.no_grad(), replayed_rng(state, s.device):",
           "with replayed_rng(state, s.device):",
           ("tests/test_consistency_recipes.py::test_ect_step_is_the_official_loss_with_shared_noise",),
           "the target pass not stop-gradient"),
    Mutant("ect_dropout_not_replayed", "recipes/ect.py", "with torch.no_grad(), replayed_rng(state, s.device):",
           "with torch.no_grad():", (f"{RECORDED}::test_short_run_logs_the_recorded_losses[ect:ict]",),
           "the target pass draws its own dropout masks"),
    Mutant("ect_stage_frozen", "recipes/ect.py", "stage = min(step * lo.stages // max(total, 1), lo.stages - 1)",
           "stage = 0", (f"{RECORDED}::test_short_run_logs_the_recorded_losses[ect]",),
           "ECT's dt never shrinks"),
    Mutant("ict_weight_reversed", "recipes/ect.py", "weight = losses.ict_weight(r, t)", "weight = losses.ict_weight(t, r)",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[ect:ict]",),
           "iCT's lambda with the levels swapped (negative)"),
    # Shared library
    Mutant("ema_decay_inverted", "stepdistill/training/setup.py", "EMAModel(params, decay=decay)",
           "EMAModel(params, decay=1 - decay)", ("tests/test_training_setup.py",), "the EMA decay inverted"),
    Mutant("generator_input_scale_dropped", "stepdistill/roles.py",
           "return self.denoiser(z * self.input_scale, self.t_init, **cond)",
           "return self.denoiser(z, self.t_init, **cond)",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[sid]",), "the generator's input scale sigma(t0) dropped"),
    Mutant("student_input_scale_dropped", "stepdistill/sampler_spec.py", "x = z * self.input_scale", "x = z",
           ("tests/test_export.py::test_class_conditional_export_samples_like_the_trained_student",),
           "the student sampler's input scale dropped"),
    Mutant("export_input_scale_dropped", "stepdistill/pipelines/class_conditional.py",
           "x = (1 - self.scheduler.alphas_cumprod[int(self.scheduler.timesteps[0])]).sqrt().to(device) * z",
           "x = z", ("tests/test_export.py::test_class_conditional_export_samples_like_the_trained_student",),
           "the exported class-conditional pipeline's input scale dropped"),
    Mutant("export_t2i_unscaled_noise", "stepdistill/export/text_to_image.py",
           "pipe.scheduler = lcm if len(timesteps) > 1 else one_step_scheduler(lcm.config)", "pipe.scheduler = lcm",
           ("tests/test_export.py::test_text_to_image_reproduces_the_trained_one_step_generator",),
           "a text-to-image export fed unscaled noise (LCMScheduler.init_noise_sigma = 1)"),
    Mutant("final_eval_autocast", "stepdistill/student.py", "keep_fp32_wrapper=False",
           "keep_fp32_wrapper=True", ("tests/test_dmd2_recipe.py::test_final_evaluation_runs_the_student_in_float32",),
           "autocast left on in the final evaluation and export"),
    Mutant("flow_table_unshifted", "stepdistill/time_sampling.py",
           "return schedule.shifted(torch.linspace(1 / self.num, 1, self.num, dtype=torch.float64))",
           "return torch.linspace(1 / self.num, 1, self.num, dtype=torch.float64)",
           ("tests/test_schedules.py",), "flow DiscreteRange times without the scheduler's shift"),
    Mutant("flow_uniform_unshifted", "stepdistill/time_sampling.py", "            t = schedule.shifted(t)",
           "            t = t", ("tests/test_schedules.py",), "flow UniformTime times without the scheduler's shift"),
    # Model families (stepdistill/prompt_encoders.py, network_call.py, conditioning.py, roles.py, families.py, export/)
    Mutant("sdxl_pooled_dropped", "stepdistill/prompt_encoders.py",
           '"added_cond_kwargs": {"text_embeds": rows["pooled"], "time_ids": time_ids}}',
           '"added_cond_kwargs": {"text_embeds": torch.zeros_like(rows["pooled"]), "time_ids": time_ids}}',
           ("tests/test_model_families.py::test_sdxl_pooled_embeddings_and_size_ids_reach_the_unet",),
           "SDXL's pooled text embedding never reaches the UNet"),
    Mutant("sdxl_time_ids_crop", "stepdistill/prompt_encoders.py",
           "torch.tensor([h, w, 0, 0, h, w], dtype=torch.float32)", "torch.tensor([h, w, h, w, h, w], dtype=torch.float32)",
           ("tests/test_model_families.py::test_sdxl_pooled_embeddings_and_size_ids_reach_the_unet",),
           "SDXL's size ids carry a crop the training images never had"),
    Mutant("sdxl_empty_prompt_encoded", "stepdistill/prompt_encoders.py",
           "self.zeros_for_empty = bool(", "self.zeros_for_empty = not bool(",
           ("tests/test_model_families.py::test_sdxl_empty_prompt_is_zeros_as_the_pipeline_builds_it",),
           "SDXL's unconditional branch encodes \"\" where the pipeline uses zeros"),
    Mutant("flux_timestep_unscaled", "stepdistill/network_call.py", "timestep=timestep.to(x.dtype) / 1000",
           "timestep=timestep.to(x.dtype)",
           ("tests/test_model_families.py::test_flow_denoiser_recovers_x0_exactly_on_a_linear_flow",),
           "Flux's transformer given 1000 t (it multiplies by 1000 itself)"),
    Mutant("flux_guidance_dropped", "stepdistill/prompt_encoders.py",
           '"guidance": torch.full((len(hidden),), self.guidance, device=hidden.device)}',
           '"guidance": torch.full((len(hidden),), 1.0, device=hidden.device)}',
           ("tests/test_model_families.py::test_flow_text_conditioning_is_the_pipelines_own",),
           "Flux-dev's embedded guidance replaced by 1"),
    Mutant("flow_x0_sign", "stepdistill/denoiser.py", "return (x_t - s * u) / (a + s)", "return (x_t + s * u) / (a + s)",
           ("tests/test_model_families.py::test_flow_denoiser_recovers_x0_exactly_on_a_linear_flow",),
           "x0 from the flow prediction with the wrong sign"),
    Mutant("flux_shift_native_resolution", "stepdistill/training/setup.py",
           "return RectifiedFlow(shift=flow_shift(config, tokens)",
           "return RectifiedFlow(shift=flow_shift(config)",
           ("tests/test_model_families.py::test_flux_schedule_shift_follows_the_training_resolution",),
           "Flux's dynamic shift taken at the native resolution, not the training one"),
    Mutant("cfg_nested_condition_not_batched", "stepdistill/conditioning.py",
           "out[k] = cat_conditions(a[k], v)", "out[k] = v",
           ("tests/test_model_families.py::test_dmd2_trains_two_steps_and_the_export_samples_as_the_student_in_stock_diffusers[sdxl]",),
           "SDXL's added conditions not joined for the two guidance branches"),
    Mutant("flow_export_shifted", "stepdistill/export/schedulers.py", "from_config(dict(config), shift=1.0, use_dynamic_shifting=False,",
           "from_config(dict(config), use_dynamic_shifting=False,",
           ("tests/test_model_families.py::test_the_export_cards_code_samples_the_students_image",),
           "the exported flow scheduler shifts the student's times again"),
    Mutant("flow_export_first_input_unscaled", "stepdistill/export/text_to_image.py", "        if timesteps[0] < 1:  # the student",
           "        if False:  # the student",
           ("tests/test_model_families.py::test_the_export_cards_code_samples_the_students_image",),
           "a flow student starting below t = 1 exported without its first input t_0 z"),
    Mutant("checkpoint_adapters_not_restored", "stepdistill/adapters.py", "        set_adapter_state(forward_state)\n",
           "", ("tests/test_roles.py::test_checkpointing_recomputes_with_the_adapters_of_the_forward_pass",),
           "the backward pass recomputes a block with whichever role's adapters ran last"),
    Mutant("dmd2_fake_unfrozen_before_backward", "stepdistill/training/dmd.py",
           "    with trainable(run.setup.unwrap(run.fake_score), False), trainable(run.setup.unwrap(run.head), False):\n        yield",
           "    yield",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[dmd2]",),
           "the fake score and head trainable in the generator's update: its GAN loss leaves gradients in them"),
    # MSD (recipes/msd.py, stepdistill/partition.py, the routed pipeline)
    Mutant("msd_labels_from_whole_space", "stepdistill/partition.py",
           "return self.part[torch.randint(0, len(self.part), (n,), generator=generator)].to(device)",
           "return self.conditioner.sample_labels(n, generator=generator, device=device)",
           ("tests/test_msd_recipe.py::test_each_student_draws_and_sees_only_its_part",),
           "a student draws labels from the whole condition space, not its part"),
    Mutant("msd_gan_reals_whole_dataset", "recipes/msd.py", "real = part_dataset(s.dataset, part)",
           "real = s.dataset", ("tests/test_msd_recipe.py::test_each_student_draws_and_sees_only_its_part",),
           "a student's GAN sees real images of every class"),
    Mutant("msd_students_share_noise", "recipes/msd.py", "train.seed * 1_000 + student + 1, step,",
           "train.seed * 1_000 + 1, step,", ("tests/test_msd_recipe.py::test_each_student_draws_and_sees_only_its_part",),
           "every student draws the same noise each step"),
    Mutant("msd_shared_fake_ignored", "recipes/msd.py",
           'shared = runs[0] if runs and cfg.model.fake_score == "shared" else None', "shared = None",
           ("tests/test_msd_recipe.py::test_a_shared_fake_score_is_one_network_and_one_optimiser_trained_by_every_student",),
           "model.fake_score=shared builds a fake score per student"),
    Mutant("msd_shared_fake_stepped_per_student", "recipes/msd.py",
           "apply=student == run.owned[-1]) if shared", "apply=True) if shared",
           ("tests/test_msd_recipe.py::test_a_shared_fake_score_is_one_network_and_one_optimiser_trained_by_every_student",),
           "a shared fake score's schedule stepped once per student: warm-up and decay K times too fast"),
    Mutant("msd_shared_fake_sums_losses", "recipes/msd.py", "dmd.FakeUpdate(1 / len(run.owned),",
           "dmd.FakeUpdate(1.0,",
           ("tests/test_msd_recipe.py::test_a_shared_fake_score_is_one_network_and_one_optimiser_trained_by_every_student",),
           "a shared fake score's gradient is the sum of the students' losses, K times the mean"),
    Mutant("msd_tsm_regresses_data", "recipes/msd.py", "target = sub.real_guided.denoiser(x_t, t, **cond)",
           "target = x0", ("tests/test_msd_recipe.py::test_teacher_score_matching_lowers_a_smaller_students_error_against_the_teacher_on_its_part",),
           "Teacher Score Matching regresses the data instead of the teacher's denoiser"),
    Mutant("msd_tsm_one_step_too_long", "recipes/msd.py", "if step < run.cfg.model.tsm_steps\n",
           "if step <= run.cfg.model.tsm_steps\n",
           ("tests/test_msd_recipe.py::test_teacher_score_matching_lowers_a_smaller_students_error_against_the_teacher_on_its_part",),
           "the TSM stage runs one step past model.tsm_steps"),
    Mutant("msd_route_modulo", "stepdistill/partition.py", "return table[labels.clamp(min=0)]",
           "return labels.clamp(min=0) % self.num_students",
           ("tests/test_msd_recipe.py::test_class_blocks_route_every_condition_to_exactly_one_student",),
           "the router ignores the partition's blocks"),
    Mutant("msd_pipeline_routes_to_first", "stepdistill/pipelines/class_conditional.py",
           "which = torch.tensor(owner, device=device)[labels.clamp(min=0)]", "which = torch.zeros_like(labels)",
           ("tests/test_msd_recipe.py::test_the_export_is_one_pipeline_that_routes_each_label_to_its_student_without_stepdistill",),
           "the exported pipeline sends every label to student 0"),
    Mutant("msd_text_pipeline_runs_first_student", "stepdistill/pipelines/routed_text.py",
           'parts["unet" if self.unet is not None else "transformer"] = self.student(k)',
           'parts["unet" if self.unet is not None else "transformer"] = self.student(0)',
           ("tests/test_msd_recipe.py::test_text_students_export_as_one_pipeline_that_routes_prompts_without_stepdistill",),
           "the routed text-to-image pipeline samples every prompt with student 0"),
    Mutant("msd_text_centroids_all_student_0", "stepdistill/export/students.py",
           "centroids = torch.stack([embeddings[table == j].mean(0) for j in range(k)])",
           "centroids = torch.stack([embeddings[table == 0].mean(0) for j in range(k)])",
           ("tests/test_msd_recipe.py::test_text_students_export_as_one_pipeline_that_routes_prompts_without_stepdistill",),
           "unseen prompts are routed against wrong centroids"),
    # TAD-SR (recipes/tadsr.py)
    Mutant("tadsr_hsd_sign", "recipes/tadsr.py", "loss_hsd = losses.hsd_loss(x, eps_s, eps_T)",
           "loss_hsd = losses.hsd_loss(x, eps_T, eps_s)", (RECORDED + "::test_short_run_logs_the_recorded_losses[tadsr]",),
           "HSD pushes the student away from the teacher's output"),
    Mutant("tadsr_hsd_independent_noise", "recipes/tadsr.py", "xT_t = s.schedule.add_noise(x_teacher, noise, t)",
           "xT_t = s.schedule.add_noise(x_teacher, draw.randn(*s.shape), t)",
           ("tests/test_tadsr_recipe.py::test_the_recipes_hsd_gradient_moves_the_student_towards_the_teachers_output",),
           "the two HSD images carry different noise"),
    Mutant("tadsr_regression_to_other_pair", "recipes/tadsr.py", "loss_reg = losses.regression_loss(x, x_teacher)",
           "loss_reg = losses.regression_loss(x, x_teacher.roll(1, 0))",
           ("tests/test_tadsr_recipe.py::test_the_regression_target_is_the_teachers_output_for_the_students_noise_and_image",),
           "the regression target is another pair's teacher output"),
    Mutant("tadsr_head_not_told_level", "recipes/tadsr.py",
           "return t, (t - s.schedule.t_min) / (s.schedule.t_max - s.schedule.t_min)", "return t, torch.zeros_like(t)",
           ("tests/test_tadsr_recipe.py::test_the_discriminator_is_told_the_level_it_judges_and_sees_each_images_own_lr",),
           "the time-aware discriminator is not told the noise level"),
    Mutant("tadsr_gan_real_without_own_lr", "recipes/tadsr.py",
           "both = conditioner.cond(torch.cat([real_labels, labels]))", "both = conditioner.cond(torch.cat([labels, labels]))",
           ("tests/test_tadsr_recipe.py::test_the_discriminator_is_told_the_level_it_judges_and_sees_each_images_own_lr",),
           "real patches are judged with the fake samples' LR images"),
    Mutant("tadsr_gan_detached", "recipes/tadsr.py",
           "features = run.teacher.features(schedule.add_noise(x, draw.randn(*shape), t), t, **cond)",
           "features = run.teacher.features(schedule.add_noise(x.detach(), draw.randn(*shape), t), t, **cond)",
           (RECORDED + "::test_short_run_logs_the_recorded_losses[tadsr]",),
           "the student's GAN loss gets no gradient"),
    # YONOS-SR (recipes/yonos.py)
    Mutant("yonos_student_sees_easy_input", "recipes/yonos.py",
           "x0 = run.student(x_t, t, **run.condition.cond(labels))", "x0 = run.student(x_t, t, **s.conditioner.cond(labels))",
           ("tests/test_yonos_recipe.py::test_the_x4_student_regresses_the_x2_teachers_prediction_at_the_same_noisy_image",),
           "the student gets the teacher's (x2) input instead of its own x4 one"),
    Mutant("yonos_target_is_data", "recipes/yonos.py",
           "target = run.teacher(x_t, t, **s.conditioner.cond(labels))  # the teacher's scale",
           "target = real",
           ("tests/test_yonos_recipe.py::test_the_x4_student_regresses_the_x2_teachers_prediction_at_the_same_noisy_image",),
           "plain denoising on data instead of the teacher's prediction"),
    # residual super-resolution networks (stepdistill/denoiser.py, the exported SR pipeline)
    Mutant("sr_residual_not_added_back", "stepdistill/denoiser.py", "return x0 if base is None else base + x0",
           "return x0",
           ("tests/test_sr_residual.py::test_a_residual_denoiser_is_the_plain_one_on_the_noised_residual_plus_the_condition",),
           "a residual network's prediction is taken for x0 itself"),
    Mutant("sr_residual_input_not_shifted", "stepdistill/denoiser.py",
           "return x_t - broadcast(self.schedule.alpha(t), x_t) * base, base", "return x_t, base",
           ("tests/test_sr_residual.py::test_a_residual_denoiser_is_the_plain_one_on_the_noised_residual_plus_the_condition",),
           "a residual network sees x_t instead of the noised residual"),
    Mutant("sr_pipeline_residual_start", "stepdistill/pipelines/super_resolution.py",
           "            x = x - abar.sqrt() * y", "            x = x",
           ("tests/test_sr_residual.py::test_the_exported_residual_pipeline_samples_two_steps_as_stepdistill_does",),
           "the exported pipeline starts its residual loop from x_T, not the noised residual"),
    Mutant("dmd_gan_from_step_zero", "stepdistill/training/dmd.py",
           "gan = step >= run.cfg.loss.gan_start_step", "gan = True",
           ("tests/test_dmd2_recipe.py::test_the_gan_terms_join_distribution_matching_at_gan_start_step",),
           "the GAN terms ignore loss.gan_start_step"),
    # the control teacher and the digits benchmark's second feature space
    Mutant("gan_real_images_all_digits", "stepdistill/data/embedded.py",
           "split=training_split(teacher_folder)", 'split="all"',
           ("tests/test_dmd2_recipe.py::test_gan_real_images_are_the_teachers_training_split_never_the_reference",),
           "the GAN's real images include the FD reference split whatever the teacher trained on"),
    Mutant("fd2_in_the_penultimate_space", "stepdistill/digits_benchmark.py",
           "FeatureSpace(self.classifier.pooled_features,", "FeatureSpace(self.classifier.features,",
           ("tests/test_digits_benchmark.py::test_fd2_is_measured_in_the_pooled_third_convolution",),
           "FD2 measured in the same features as FD"),
    # Fused kernels (kernels/): what each backward is scaled by and where its per-sample factors come from
    Mutant("kernel_dmd_backward_ignores_grad_output", "kernels/stepdistill_kernels/dmd/triton_kernel.py",
           "scale = tl.load(grad_output_ptr) * inv_numel  # float32: the loss scale never meets a 16-bit value",
           "scale = inv_numel", ("tests/kernels/test_kernel_dmd.py",),
           "the fused DMD backward drops grad_output (a loss weight or GradScaler's scale)"),
    Mutant("kernel_vsd_guidance_swapped", "kernels/stepdistill_kernels/vsd/triton_kernel.py",
           "g = tl.load(weight_ptr + b) * ((fu + s_fake * (fc - fu)) - (ru + s_real * (rc - ru)))",
           "g = tl.load(weight_ptr + b) * ((fu + s_real * (fc - fu)) - (ru + s_fake * (rc - ru)))",
           ("tests/kernels/test_kernel_vsd.py",), "the teacher's and the fake score's guidance scales swapped"),
    Mutant("kernel_sid_omega_unclipped", "kernels/stepdistill_kernels/sid/triton_kernel.py",
           "omega = tl.maximum(row_sums(abs_partial_ptr, r, m, NUM_BLOCKS, ROWS, COLS) * inv_n, omega_min)",
           "omega = row_sums(abs_partial_ptr, r, m, NUM_BLOCKS, ROWS, COLS) * inv_n",
           ("tests/kernels/test_kernel_sid.py",), "SiD's normaliser loses the official 1e-5 clip"),
    Mutant("kernel_pseudo_huber_weight_grad_unscaled", "kernels/stepdistill_kernels/pseudo_huber/triton_kernel.py",
           "tl.store(grad_weight_ptr + b, tl.load(per_ptr + b) * go / B)",
           "tl.store(grad_weight_ptr + b, tl.load(per_ptr + b) / B)",
           ("tests/kernels/test_kernel_pseudo_huber.py",), "the weight's gradient ignores grad_output"),
    Mutant("kernel_row_partials_skip_a_chunk", "kernels/stepdistill_kernels/launch.py", "for c in range(0, NUM_BLOCKS, COLS):",
           "for c in range(COLS, NUM_BLOCKS, COLS):", ("tests/kernels/test_kernel_training_step.py",
                                                       "tests/kernels/test_kernel_dmd.py"),
           "the per-sample sums skip the first partials (rows of up to COLS blocks lose everything)"),
    Mutant("fused_losses_fallback_never_taken", "stepdistill/ops.py",
           'reason = _verdicts.get(name) if _mode == "auto" else None', "reason = None",
           ("tests/test_fused_losses_policy.py::test_auto_falls_back_to_the_reference_with_one_warning",),
           "train.fused_losses=auto warns about a failed kernel and keeps running it"),
    Mutant("fused_losses_check_compares_nothing", "stepdistill/ops.py",
           "mismatch = _compare([n for n, _ in leaves], actual, expected, grad_rtol)", "mismatch = None",
           ("tests/test_fused_losses_policy.py::test_auto_falls_back_to_the_reference_with_one_warning",),
           "the auto check runs the kernel and never compares it with the reference"),
    # Consistency distillation (recipes/consistency_distill.py), beyond its wiring above: the target network,
    # the boundary condition's settings, LoRA and the student's sampler spec
    Mutant("cd_online_target_keeps_graph", "recipes/consistency_distill.py",
           "    with torch.no_grad():\n        target = target_net(x_prev, end.float(), **cond)",
           "    if True:\n        target = target_net(x_prev, end.float(), **cond)",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[consistency_distill:online]",),
           "the online target keeps its graph: the student is pulled by its own target's gradient"),
    Mutant("cd_online_target_ignored", "recipes/consistency_distill.py", 'if cfg.loss.target == "online":',
           'if False:', (f"{WIRING}[consistency_distill:loss.target]",),
           "loss.target=online still trains against an EMA target"),
    Mutant("cd_lora_ema_target_ignored", "recipes/consistency_distill.py",
           '    if cfg.model.lora_rank is None:\n        return make_target(generator)',
           '    if cfg.model.lora_rank is None:\n        return make_target(generator)\n    return None',
           ("tests/test_consistency_recipes.py::test_a_lora_student_s_ema_target_is_an_ema_copy_of_its_adapter",),
           "model.lora_rank with loss.target=ema silently trains against the online student"),
    Mutant("cd_lora_ema_target_swapped", "recipes/consistency_distill.py",
           'ema_lora(run.setup.teacher.net, "student_target", "student", mu)',
           'ema_lora(run.setup.teacher.net, "student", "student_target", mu)',
           ("tests/test_consistency_recipes.py::test_a_lora_student_s_ema_target_is_an_ema_copy_of_its_adapter",),
           "the LoRA student is pulled towards its EMA target instead of the target following it"),
    Mutant("cd_timestep_scaling_dropped", "recipes/consistency_distill.py",
           "sigma_min=m.sigma_min, timestep_scaling=m.timestep_scaling)", "sigma_min=m.sigma_min)",
           (f"{WIRING}[consistency_distill:model.timestep_scaling]",),
           "LCM's timestep scaling reaches the export but not the trained boundary condition"),
    Mutant("cd_sigma_min_dropped", "recipes/consistency_distill.py",
           "sigma_min=m.sigma_min, timestep_scaling=m.timestep_scaling)", "timestep_scaling=m.timestep_scaling)",
           (f"{WIRING}[consistency_distill:model.sigma_min]",), "the 'cm' boundary's sigma_min never reaches the student"),
    Mutant("cd_lora_alpha_dropped", "recipes/consistency_distill.py",
           'add_lora(teacher.net, "student", rank=m.lora_rank, alpha=m.lora_alpha,',
           'add_lora(teacher.net, "student", rank=m.lora_rank,', (f"{WIRING}[consistency_distill:model.lora_alpha]",),
           "the LCM-LoRA's alpha dropped on its way to peft"),
    Mutant("cd_inference_steps_ignored", "recipes/consistency_distill.py",
           "steps=m.inference_steps, gamma=", "steps=None, gamma=",
           (f"{WIRING}[consistency_distill:model.inference_steps]",),
           "the student samples its whole grid instead of model.inference_steps of it"),
    Mutant("cd_boundary_pair_shifted", "recipes/consistency_distill.py", "at_edge = level == 0", "at_edge = level == 1",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[consistency_distill]",),
           "the boundary's target (x itself) applied one level too high"),
    # Curricula (stepdistill/curricula.py): the skip grids and iCT's discretisation
    Mutant("vp_skip_grid_off_by_one", "stepdistill/curricula.py",
           "torch.arange(1, levels + 1, dtype=torch.float64) * k - 1])", "torch.arange(1, levels + 1, dtype=torch.float64) * k])",
           ("tests/test_curricula.py",), "LCM's skip grid {19, 39, ..., 999} shifted to {20, ..., 1000}"),
    Mutant("edm_skip_grid_reversed", "stepdistill/curricula.py",
           "return schedule.t_from_ratio(karras_sigmas(levels + 1, r_min, r_max).flip(0)).to(torch.float64)",
           "return schedule.t_from_ratio(karras_sigmas(levels + 1, r_min, r_max)).to(torch.float64)",
           ("tests/test_curricula.py",), "the EDM skip grid descends instead of ascending from the boundary"),
    Mutant("ict_levels_missing_one", "stepdistill/curricula.py", "2 ** math.floor(step / max(k_prime, 1)), s1) + 1",
           "2 ** math.floor(step / max(k_prime, 1)), s1)", ("tests/test_curricula.py",),
           "iCT's N(k) without its + 1 (one level fewer at every stage)"),
    Mutant("segment_edges_ceil", "stepdistill/curricula.py", "picked = desc[(torch.arange(segments) * levels) // segments]",
           "picked = desc[-((-torch.arange(segments) * levels) // segments)]", ("tests/test_curricula.py",),
           "segment edges rounded up: the positions LCMScheduler samples are missed"),
    # ECT / iCT (recipes/ect.py)
    Mutant("ect_default_huber_c", "recipes/ect.py", "c = 0.00054 * x[0].numel() ** 0.5", "c = 0.0054 * x[0].numel() ** 0.5",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[ect:ict]",), "iCT's default c = 0.00054 sqrt(d) off by 10x"),
    Mutant("ect_clean_target_is_network", "recipes/ect.py",
           "    target = torch.where(clean.view(-1, *([1] * len(s.shape))), x, target)\n", "",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[ect]",
            f"{RECORDED}::test_short_run_logs_the_recorded_losses[ect:ict]"),
           "at r = 0 the target is the network's output instead of the clean image"),
    # Multi-student distillation (recipes/msd.py)
    Mutant("msd_tsm_weight_dropped", "recipes/msd.py",
           "loss = losses.denoising_loss(sub.generator(x_t, t, **cond), target, weight)",
           "loss = losses.denoising_loss(sub.generator(x_t, t, **cond), target, torch.ones_like(weight))",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[msd:tsm]",),
           "teacher score matching without the parameterisation's weighting"),
    Mutant("msd_tsm_times_uniform", "recipes/msd.py", 't = draw.times(fake_score_times("teacher"), s.schedule)',
           't = draw.times(fake_score_times("uniform"), s.schedule)',
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[msd:tsm]",),
           "teacher score matching off the teacher's training levels"),
    Mutant("msd_fake_adapters_collide", "recipes/msd.py", 'fake_adapter=f"fake_score_{student}"', 'fake_adapter="fake_score"',
           (f"{WIRING}[msd:model.fake_score_lora_rank]",), "per-student LoRA fake scores share one adapter name"),
    # DMD2's shared steps (stepdistill/training/dmd.py)
    Mutant("dmd_backsim_skips_renoise", "stepdistill/training/dmd.py", "run.ts, k,\n                              renoise=renoise)",
           "run.ts, k,\n                              renoise=[torch.zeros_like(r) for r in renoise])",
           (f"{RECORDED}::test_short_run_logs_the_recorded_losses[dmd2:multistep]",),
           "backward simulation re-noises without noise"),
    Mutant("dmd_generator_warmup_not_divided", "stepdistill/training/dmd.py",
           "warmup_steps=math.ceil(o.warmup_steps / o.update_ratio)", "warmup_steps=o.warmup_steps",
           ("tests/test_dmd2_recipe.py::test_the_generator_warms_up_over_the_same_training_steps_as_the_fake_score",),
           "the generator's warm-up counted in its own updates as if they were training steps"),
    Mutant("dmd_unlabelled_reals_keep_labels", "stepdistill/training/dmd.py",
           "fake_labels = labels if real_labels is not None else torch.full_like(labels, -1)", "fake_labels = labels",
           ("tests/test_dmd2_recipe.py::test_the_gan_sees_unlabelled_reals_and_fakes_under_the_null_condition",),
           "with unlabelled real images the discriminator tells fakes by their labels"),
    # Super-resolution (degradations, the SR benchmark, TAD-SR, YONOS-SR)
    Mutant("degradation_noise_half", "stepdistill/degradations.py", "noise * (2 * self.noise_sigma / 255)",
           "noise * (self.noise_sigma / 255)", ("tests/test_degradations.py",),
           "LR noise sigma read in [0, 1] levels instead of 8-bit levels on a [-1, 1] image"),
    Mutant("degradation_blur_skipped", "stepdistill/degradations.py", "if self.blur_sigma > 0:", "if self.blur_sigma > 1e9:",
           ("tests/test_degradations.py",), "the Gaussian blur before the downsample never runs"),
    Mutant("degradation_aliased", "stepdistill/degradations.py", 'mode="bicubic", antialias=True,',
           'mode="bicubic", antialias=False,', ("tests/test_degradations.py",), "bicubic downsampling without anti-aliasing"),
    Mutant("sr_ssim_border_kept", "stepdistill/sr_benchmark.py", '"ssim_y": np.mean([ssim(a, b, crop_border=crop,',
           '"ssim_y": np.mean([ssim(a, b, crop_border=0,', ("tests/test_sr_benchmark.py",),
           "SSIM measured over the border the protocol crops"),
    Mutant("tadsr_hsd_max_t_ignored", "recipes/tadsr.py", "UniformTime(0.0, loss.hsd_max_t)", "UniformTime(0.0, 1.0)", (f"{WIRING}[tadsr:loss.hsd_max_t]",),
           "HSD levels drawn over the whole range: loss.hsd_max_t never read"),
    Mutant("yonos_times_ignored", "recipes/yonos.py", "fake_score_times(run.cfg.loss.times)", 'fake_score_times("teacher")',
           (f"{WIRING}[yonos:loss.times]",), "YONOS's training levels ignore loss.times"),
    # The export (stepdistill/export/, stepdistill/student.py)
    Mutant("export_one_step_scheduler_for_multistep", "stepdistill/export/text_to_image.py",
           "pipe.scheduler = lcm if len(timesteps) > 1 else one_step_scheduler(lcm.config)",
           "pipe.scheduler = one_step_scheduler(lcm.config)",
           ("tests/test_consistency_recipes.py::test_tiny_text_to_image_preset_trains_two_steps_and_stock_diffusers_runs_it_at_four",),
           "a multistep text student exported with the one-step scheduler"),
    Mutant("export_lora_metadata_dropped", "stepdistill/export/lora.py", 'f"{prefix}_lora_adapter_metadata": metadata})',
           'f"{prefix}_lora_adapter_metadata": None})',
           ("tests/test_consistency_recipes.py::test_lcm_lora_loads_into_the_stock_base_pipeline_and_reproduces_the_student",),
           "the exported LoRA without its rank / alpha metadata"),
    Mutant("export_x0_clipped_between_steps", "stepdistill/export/pixel.py",
           "scheduler = lcm_scheduler(scheduler_config, clip_sample=False, tcd=gamma is not None, **options)",
           "scheduler = lcm_scheduler(scheduler_config, clip_sample=True, tcd=gamma is not None, **options)",
           ("tests/recipes/test_contract.py::test_the_export_samples_the_students_images_without_stepdistill[consistency_distill]",),
           "the exported pipeline clips x0 between steps where the measured student does not"),
    # Gradient accumulation (stepdistill/training/draw.py, setup.py's accumulate)
    Mutant("accumulation_views_draw_afresh", "stepdistill/training/draw.py",
           "            tape.position = None if index == 0 else 0", "            tape.position = None",
           ("tests/test_accumulation.py::test_micro_views_replay_the_draws_and_take_their_own_rows",),
           "each micro-batch draws new noise and times instead of its rows of the step's draws"),
    Mutant("accumulation_sums_micro_losses", "stepdistill/training/setup.py",
           "        draw.acc.backward(loss * (weight / draw.passes))", "        draw.acc.backward(loss * weight)",
           ("tests/test_accumulation.py::test_accumulated_gradients_are_the_whole_batch_s",),
           "accumulated gradients are the sum over micro-batches, passes times the batch's"),
    Mutant("accumulation_every_view_takes_the_first_rows", "stepdistill/training/draw.py",
           "        return x[index * n:(index + 1) * n]", "        return x[:n]",
           ("tests/test_accumulation.py::test_micro_views_replay_the_draws_and_take_their_own_rows",),
           "every micro-batch trains on the first micro-batch's samples"),
    Mutant("accumulation_msd_students_never_split", "recipes/msd.py",
           "    passes = 1 if train.micro_batch_size is None else", "    passes = 1 if True else",
           ("tests/recipes/test_contract.py::test_accumulated_micro_batches_train_what_one_batch_does[msd]",),
           "MSD's students ignore train.micro_batch_size: whole shares in one pass (no memory saved)"),
    # The training loop and its guards (stepdistill/training/loop.py, horizon.py)
    Mutant("loop_nonfinite_count_not_reset", "stepdistill/training/loop.py",
           "bad_steps = bad_steps + 1 if any_bad > 0 else 0", "bad_steps = bad_steps + 1 if any_bad > 0 else bad_steps",
           ("tests/test_training_loop.py",), "the divergence guard counts non-finite steps that are not consecutive"),
    Mutant("loop_sigint_ignored", "stepdistill/training/loop.py", "for sig in (signal.SIGTERM, signal.SIGINT):",
           "for sig in (signal.SIGTERM,):", ("tests/test_training_loop.py",),
           "Ctrl-C kills the run mid-step instead of checkpointing it"),
    Mutant("horizon_later_move_not_anchored", "stepdistill/training/horizon.py",
           "        if new > self.total:  # moved later", "        if False:  # moved later",
           ("tests/test_horizon.py",), "a horizon moved later during the decay: the decaying rate rises again"),
    Mutant("horizon_decay_not_respread", "stepdistill/training/horizon.py",
           "                anchor = (at, decay(at, anchor, totals[i]))", "                anchor = None",
           ("tests/test_horizon.py",), "a lengthened decay restarts from the warm-up's end: the rate jumps up"),
    Mutant("horizon_refit_never_lengthens", "stepdistill/training/horizon.py",
           "        self.move(done, steps)\n", "        self.move(done, min(steps, self.total))\n",
           ("tests/test_horizon.py",), "a run that sped up keeps the horizon fitted to its slow start (half its time)"),
    Mutant("horizon_resume_forgets_fit", "stepdistill/training/horizon.py",
           '            self.steps = min(int(saved), self.max_steps)\n', "",
           ("tests/test_horizon.py",), "a resumed run drops its checkpoint's fitted horizon"),

    # Runs that do what their records say (stepdistill/training/resume.py, run_lock.py, checkpointing.py, caches)
    Mutant("resume_settings_not_applied", "stepdistill/training/setup.py", "        apply_settings(accelerator)\n", "",
           (f"{RESUME}::test_resume_applies_new_learning_rates_and_records_them[dmd2]",),
           "a resume keeps the checkpoint's learning rates while the records state the new ones"),
    Mutant("resume_rate_ignores_schedule", "stepdistill/training/resume.py",
           'lr=settings["lr"] * factor(sched.last_epoch)', 'lr=settings["lr"]',
           (f"{RESUME}::test_a_resumed_rate_follows_its_schedule_at_the_restored_step",),
           "a resumed decaying rate jumps back to its base for one step"),
    Mutant("resume_update_ratio_may_change", "stepdistill/training/resume.py", 'DEFINES_RUN = ("optim.update_ratio",)',
           "DEFINES_RUN = ()", (f"{RESUME}::test_a_change_that_defines_the_run_is_refused_with_both_values",),
           "a resume silently changes which optimiser steps when"),
    Mutant("resume_overwrites_config", "stepdistill/training/setup.py",
           "            record_resume(out / CONFIG_FILE, config, step=start_step, checkpoint=resume_from, changed=changed)",
           "            save_config(config, out / CONFIG_FILE)",
           (f"{RESUME}::test_resume_applies_new_learning_rates_and_records_them[dmd2]",),
           "a resume overwrites the run's first config instead of appending its record"),
    Mutant("resume_keeps_fit_after_max_steps_change", "stepdistill/training/setup.py",
           "refit=any(k in changed for k in HORIZON_KEYS))", "refit=False)",
           (f"{RESUME}::test_a_fitted_horizon_is_kept_unless_max_steps_or_the_time_limit_change",),
           "raising max_steps on resume keeps the old fitted horizon: the run stops at once"),
    Mutant("run_lock_not_taken", "stepdistill/training/setup.py",
           "        take_run_lock(accelerator, train.output_dir)", "        pass",
           (f"{FOLDER}::test_a_second_run_in_a_live_runs_folder_is_refused",),
           "two runs write into one folder"),
    Mutant("run_lock_never_stale", "stepdistill/run_lock.py", 'or _alive(holder["pid"]))', "or True)",
           (f"{FOLDER}::test_a_dead_runs_lock_is_taken_over_and_a_finished_run_leaves_none",),
           "a dead run's lock blocks its folder for good"),
    Mutant("cache_identity_dropped", "stepdistill/data/trajectories.py",
           'shape=",".join(map(str, shape)), **(identity or {}))', 'shape=",".join(map(str, shape)))',
           (f"{FOLDER}::test_trajectories_are_solved_again_for_another_teacher",),
           "cached trajectories of another teacher are trained on"),
    Mutant("overwrite_keeps_caches", "stepdistill/checkpointing.py",
           "        shutil.rmtree(root / CACHE_DIR, ignore_errors=True)\n", "",
           (f"{FOLDER}::test_a_matching_cache_is_reused_and_overwrite_removes_caches",),
           "train.overwrite leaves the old run's teacher outputs behind"),
    Mutant("damaged_checkpoint_not_passed_over", "stepdistill/checkpointing.py",
           "            problem = damage(path)\n            if problem is None:", "            problem = None\n            if problem is None:",
           (f"{FOLDER}::test_resume_latest_passes_over_a_damaged_checkpoint_and_names_the_file",),
           "resume=latest keeps picking a truncated newest checkpoint"),
    Mutant("published_command_keeps_local_paths", "stepdistill/local_paths.py",
           'return f"{key}={_public(value)}" if eq and not key.startswith("/") else _public(token)', "return token",
           ("tests/test_dmd2_recipe.py::test_tiny_text_to_image_preset_trains_and_exports",),
           "the model card quotes the teacher's and the output folder's absolute paths"),

    # How a student samples, one definition (stepdistill/sampler_spec.py) and what reads it back
    Mutant("spec_tcd_ignored", "stepdistill/sampler_spec.py", "        if self.gamma is not None:\n            return tcd(",
           "        if False:\n            return tcd(", (f"{EVALUATE_EXPORTS}::test_tcd_student",),
           "a TCD (gamma) student sampled with LCM's re-noising"),
    Mutant("spec_skip_grid_length_dropped", "stepdistill/sampler_spec.py",
           'options["original_inference_steps"] = len(self.timesteps)', "pass",
           (f"{EVALUATE_EXPORTS}::test_consistency_student_at_k_steps_of_its_grid",),
           "a skip-grid student exported without its grid's length: K steps pick other times"),
    Mutant("export_record_dropped", "stepdistill/export/folders.py", "    if record is not None:\n        (folder",
           "    if False:\n        (folder", (f"{EVALUATE_EXPORTS}::test_digits_one_step",),
           "an export without student.json"),
    Mutant("evaluate_latents_unscaled", "stepdistill/export/calls.py", "else noise * spec.input_scale", "else noise",
           (f"{EVALUATE_EXPORTS}::test_sd_one_step_export_is_scored_as_the_student",),
           "evaluation feeds a multistep text export unscaled noise (sigma(t_0) dropped)"),
    Mutant("evaluate_own_times_only", "stepdistill/evaluation/generate.py",
           "self.pipe.register_to_config(timesteps=self.times(nfe))", "self.pipe.register_to_config(timesteps=own)",
           (f"{EVALUATE_EXPORTS}::test_consistency_student_at_k_steps_of_its_grid",),
           "evaluation at K steps runs the export's default times"),
    Mutant("checkpoint_record_ignored", "stepdistill/evaluation/checkpoint.py",
           "return _recorded_sampler(_for_sampling(student), run.checkpoint)", "return _for_sampling(student)",
           ("tests/test_evaluate_inputs.py::test_every_checkpoint_and_export_records_how_its_student_samples",),
           "a checkpoint sampled as its recipe rebuilds it, not as its student.json says"),
    Mutant("solver_zero_ignored", "recipes/consistency_distill.py", "return s.schedule.at_zero(cfg.loss.solver_zero)",
           "return s.schedule",
           ("tests/recipes/test_config_wiring.py::test_changing_the_key_changes_what_the_run_does[consistency_distill:loss.solver_zero]",),
           "loss.solver_zero read and never passed on"),
    Mutant("zero_always_clean", "stepdistill/samplers.py", 'clean = (t64 == 0) & (schedule.zero == "clean")',
           "clean = t64 == 0",
           ("tests/test_official_parity.py::test_lcm_teacher_step_at_the_boundary_pair_and_inside",),
           "the schedule's lowest training level ignored by the solvers"),
    Mutant("family_flux_unpacked", "stepdistill/families.py", "flow=True, packed=True,", "flow=True, packed=False,",
           ("tests/test_model_families.py::test_flow_denoiser_recovers_x0_exactly_on_a_linear_flow",),
           "Flux's network called on unpacked latents"),
    Mutant("embedded_data_by_shape", "stepdistill/data/embedded.py", "        return None\n    return (yaml",
           '        return "digits"\n    return (yaml',
           ("tests/test_training_setup.py::test_real_images_come_from_the_data_the_teacher_was_trained_on",),
           "a teacher without a record of its data gets the digits"),
    Mutant("text_images_with_class_folders", "stepdistill/training/setup.py",
           "if data.prompts is not None and dataset.labels is not None:", "if False:",
           ("tests/test_bad_inputs.py::test_bad_input_gets_one_clear_line[dmd2:model.teacher=tiny-sd data.prompts={root]",),
           "a text-to-image run reads class sub-folders' labels as prompt numbers"),
    Mutant("benchmark_never_applies", "stepdistill/training/benchmarks.py",
           'all(s.conditioner.kind == "lr" for s', 'all(s.conditioner.kind == "class" for s',
           ("tests/test_tadsr_recipe.py::test_a_run_measures_bicubic_the_teacher_and_the_student_on_held_out_patches",),
           "the SR benchmark skips the SR students"),
    # FSDP over CPU processes (stepdistill/sharding.py)
    Mutant("fsdp_bottleneck_root_out_of_graph", "stepdistill/denoiser.py",
           "return captured[0].float() + 0.0 * network_output(out).float().sum()", "return captured[0].float()",
           (f"{SHARDING}::test_a_sharded_frozen_networks_bottleneck_backpropagates_as_the_whole_one",),
           "a sharded network's final output left out of the GAN features' graph: its own weights are freed before "
           "the second backward"),
    Mutant("fsdp_ema_saved_sharded", "stepdistill/training/ema.py",
           '"shadow_params": [full(p).detach().cpu() for p in self.shadow_params]',
           '"shadow_params": [p.detach().cpu() for p in self.shadow_params]',
           (f"{SHARDING}::test_the_ema_of_sharded_weights_checkpoints_whole_and_loads_back_sharded",),
           "the EMA of sharded weights checkpointed as rank 0's shards"),
    Mutant("fsdp_optimiser_state_not_loaded", "stepdistill/sharding.py",
           "            set_optimizer_state_dict(self.roles, opt, saved, options=whole)", "            pass",
           (f"{SHARDING}::test_sharded_roles_and_their_optimiser_checkpoint_whole_and_load_back",),
           "a resume of sharded roles keeps the fresh Adam moments"),
    Mutant("fsdp_student_keeps_trained_weights", "stepdistill/student.py",
           "                    p.copy_(full(shadow))", "                    pass",
           (f"{SHARDING}::test_a_sharded_student_is_gathered_whole_with_its_ema_for_evaluation_and_export",),
           "the gathered student exported with the trained weights, not the EMA's"),
    Mutant("fsdp_role_hides_its_blocks", "stepdistill/roles.py",
           "return self.denoiser._no_split_modules", "return None",
           (f"{SHARDING}::test_accelerates_fsdp_wraps_a_roles_blocks_as_it_wraps_its_networks",),
           "accelerate's FSDP wraps a generator as one unit, gathered whole for every pass"),
    Mutant("prompt_cache_unbounded", "stepdistill/conditioning.py",
           "while self._cache_bytes > self.cache_bytes_limit and len(self._cache) > 1:", "while False:",
           ("tests/test_conditioning.py::test_the_prompt_cache_keeps_the_most_recent_prompts_within_its_budget",),
           "the encoded prompts fill the CPU memory of every process"),
    Mutant("meters_norm_after_clipping", "stepdistill/training/setup.py",
           "    record_grad_norm(opt, norm)  # logged", "    record_grad_norm(opt, norm.clamp(max=grad_clip or 1e30))  # logged",
           ("tests/test_dmd2_recipe.py::test_the_log_holds_each_optimisers_rate_and_gradient_norm_the_speed_and_the_memory",),
           "the logged gradient norm is the clipped one"),
    Mutant("trackers_project_ignored", "stepdistill/training/loop.py",
           "accelerator.init_trackers(train.project or name,", "accelerator.init_trackers(name,",
           ("tests/test_training_loop.py::test_the_trackers_get_the_project_the_run_name_and_every_setting_as_a_typed_hyperparameter",),
           "train.project never reaches the trackers"),
    Mutant("sample_grid_decoded_at_once", "stepdistill/training/final.py",
           "for part in x.split(DECODE_BATCH)", "for part in [x]",
           ("tests/test_training_loop.py::test_the_sample_grid_decodes_its_latents_a_few_at_a_time_and_only_where_it_is_written",),
           "the sample grid's 80 latents decoded in one VAE call"),
    Mutant("real_gan_reals_under_null_caption", "stepdistill/training/dmd.py",
           "real_labels = real_labels if real_labels is not None else fake_labels",
           "real_labels = torch.full_like(labels, -1)",
           ("tests/test_paired_data.py::test_a_text_to_image_run_trains_on_each_source_and_its_gan_judges_each_image_under_its_own_caption[metadata.jsonl-False]",),
           "the GAN judges captioned real images under the empty prompt"),
    Mutant("paired_captions_at_prompt_numbers", "stepdistill/training/setup.py",
           "dataset.caption_offset = conditioner.caption_offset if conditioner.captions else 0",
           "dataset.caption_offset = 0",
           ("tests/test_paired_data.py::test_a_text_to_image_run_trains_on_each_source_and_its_gan_judges_each_image_under_its_own_caption[metadata.jsonl-True]",),
           "with a prompt file, real images are labelled with the prompts' numbers, not their captions'"),
    Mutant("stream_rows_of_process_zero", "stepdistill/data/stream.py",
           "rows = slice(rank * (k.batch // processes), (rank + 1) * (k.batch // processes))",
           "rows = slice(0, k.batch // processes)", ("tests/test_paired_data.py::test_the_stream_does_not_depend_on_workers_processes_or_resume",),
           "every process trains on the first process's real images"),
    Mutant("stream_calls_share_a_batch", "stepdistill/data/stream.py",
           "key = Key(draw.seed, draw.batch, draw.step, len(self._calls))", "key = Key(draw.seed, draw.batch, draw.step, 0)",
           ("tests/test_paired_data.py::test_the_stream_does_not_depend_on_workers_processes_or_resume",), "a step's second real batch repeats its first"),
    Mutant("stream_crops_from_worker_seed", "stepdistill/data/stream.py",
           "            torch.manual_seed(seed)\n", "", ("tests/test_paired_data.py::test_the_stream_does_not_depend_on_workers_processes_or_resume",),
           "random crops and flips follow the worker's generator: workers and processes change the data"),
    Mutant("stream_loader_draws_global_seed", "stepdistill/data/stream.py",
           "generator=torch.Generator().manual_seed(key.step))", "generator=None)",
           ("tests/test_paired_data.py::test_the_stream_leaves_torchs_global_generator_alone",),
           "the loader's start draws from torch's global generator, so a resumed run drops out differently"),
    Mutant("grid_not_sent_to_trackers", "stepdistill/training/loop.py",
           "                    log_images(accelerator, {\"samples\": grid}, step=done)\n",
           "                    pass\n", ("tests/test_tracking.py::test_tensorboard_gets_the_validation_grid_and_the_scalars",), "the sample grid never reaches TensorBoard or W&B"),
    Mutant("validation_prompts_ignored", "stepdistill/training/recipe.py",
           "                                               columns=columns),",
           "                                               columns=None),", ("tests/test_tracking.py::test_tensorboard_gets_the_validation_grid_and_the_scalars",),
           "the sample grid shows the first prompts, not train.validation_prompts"),
]


def scratch_copy(dest: Path) -> None:
    """The checkout's tracked and untracked (not ignored) files, as they are now."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, str, float]:
    """(passed, first failing test or '', seconds)."""
    env = {**os.environ, "PYTHONPATH": f"{copy / 'kernels'}{os.pathsep}{copy}", "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timeout", time.time() - start
    seconds = time.time() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    if proc.returncode not in (0, 1):  # collection error, crash: counts as a failure, report it
        return False, failed[0] if failed else f"pytest exit {proc.returncode}", seconds
    return proc.returncode == 0, failed[0] if failed else "", seconds


def check(mutant: Mutant, timeout: float, baselines: dict | None = None) -> dict:
    """`baselines`: test selections already seen passing on the unmutated checkout (run once per selection)."""
    baselines = {} if baselines is None else baselines
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        copy = Path(tmp)
        scratch_copy(copy)
        if mutant.tests not in baselines:
            passed, failed, baselines[mutant.tests] = run_tests(copy, mutant.tests, timeout)
            if not passed:
                raise RuntimeError(f"{mutant.name}: the unmutated tests fail ({failed}); fix them first")
        base_seconds = baselines[mutant.tests]
        target = copy / mutant.path
        text = target.read_text()
        if text.count(mutant.old) != 1:
            raise RuntimeError(f"{mutant.name}: the text to mutate occurs {text.count(mutant.old)} times in "
                               f"{mutant.path}, expected once (did the code change?)")
        target.write_text(text.replace(mutant.old, mutant.new))
        passed, failed, seconds = run_tests(copy, mutant.tests, timeout)
    return dict(asdict(mutant), killed=not passed, killed_by=failed, seconds=round(seconds, 1),
                unmutated_seconds=round(base_seconds, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="mutant names (default: all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per test run")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default with all mutants: {RESULTS})")
    args = parser.parse_args(argv)
    names = {m.name for m in MUTANTS}
    unknown = sorted(set(args.only or []) - names)
    if unknown:
        parser.error(f"unknown mutants {unknown}; known: {', '.join(sorted(names))}")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    rows = []
    baselines: dict = {}
    for m in chosen:
        row = check(m, args.timeout, baselines)
        rows.append(row)
        status = f"killed by {row['killed_by']}" if row["killed"] else "SURVIVED"
        print(f"{m.name:36s} {row['seconds']:6.1f}s  {status}", flush=True)
    survivors = [r["name"] for r in rows if not r["killed"]]
    out = args.out or (RESULTS if not args.only else None)
    if out is not None:
        from stepdistill.io import atomic_write_text

        summary = dict(mutants=len(rows), killed=len(rows) - len(survivors), survivors=survivors,
                       slowest_kill_seconds=max((r["seconds"] for r in rows if r["killed"]), default=0.0),
                       command="python tools/mutations.py", results=rows)
        atomic_write_text(out, json.dumps(summary, indent=2) + "\n")
        print(f"wrote {out}")
    print(f"{len(rows) - len(survivors)}/{len(rows)} killed" + (f"; survivors: {survivors}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
