"""Pipelines that travel inside exported folders. Each module here imports only torch and diffusers (never
stepdistill), because `stepdistill.export` copies its file into the folder, where diffusers loads it with
`trust_remote_code=True` in environments without stepdistill.

- `class_conditional`: `StepDistillClassConditionalPipeline`, few-step sampling of a class-conditional
  pixel-space student with an `LCMScheduler`.
"""
