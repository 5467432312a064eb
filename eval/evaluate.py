"""Measure any model the way the papers do: `ref`, `gen`, `calc`, `all` and `sr` (super-resolution). The
commands and their options: `stepdistill.evaluation.cli`, or `python eval/evaluate.py --help`.

    python eval/evaluate.py all --protocol digits --model digits --nfe 1 8 35 --sampler dpmpp_2m
    accelerate launch --num_processes 2 eval/evaluate.py gen ...          # images split across processes
"""

from stepdistill.evaluation.cli import main

if __name__ == "__main__":
    main()
