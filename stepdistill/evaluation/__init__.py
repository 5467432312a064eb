"""The evaluation harness: protocols, generation with per-image seeds, clean-fid FID/KID, CLIP score,
the digits FD protocol, SR PSNR/SSIM, and the reports. The command line is `eval/evaluate.py`
(`stepdistill.evaluation.cli`)."""
