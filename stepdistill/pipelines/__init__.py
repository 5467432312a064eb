"""Pipelines that travel inside exported folders. Each module here imports only torch and diffusers (never
stepdistill), because `stepdistill.export` copies its file into the folder, where diffusers loads it with
`trust_remote_code=True` in environments without stepdistill.

- `class_conditional`: `StepDistillClassConditionalPipeline`, few-step sampling of a class-conditional
  pixel-space student with an `LCMScheduler` (several students: each label routed to its owner).
- `routed_text`: `StepDistillRoutedTextPipeline`, several text-to-image students in one folder, each prompt routed
  to its student (multi-student distillation), which then runs the stock base pipeline.
- `super_resolution`: `StepDistillSuperResolutionPipeline`, a few-step super-resolution student, `pipe(image=LR)`.

Each file stands alone in its folder, so the few lines that keep a re-saved folder self-contained
(`save_pretrained` copying the file back in) are written in each rather than imported.
"""
