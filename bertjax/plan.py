"""`python -m bertjax.plan ...` is `bertjax plan ...`; the command itself is bertjax.tools.plan.

Kept beside `python -m bertjax.pretrain` and `.finetune` because TPU users type it that way.
"""
import runpy

if __name__ == "__main__":
    runpy.run_module("bertjax.tools.plan", run_name="__main__", alter_sys=True)
