"""What a ReST^EM update shows on the console: one progress bar over its optimizer steps.

Trainer prints each log dict (``{'loss': ..., 'grad_norm': ...}``) to stdout, beside the project's
table, through its PrinterCallback (or ProgressCallback's bar, without ``disable_tqdm``). Here the
bar is the project's (`core.console.Progress`) and the dicts go to stderr, which a
`seal` command sends to the run folder's log (``seal --verbose``: the console). The dicts are also
kept in ``trainer.state.log_history``, which the version's manifest records.
"""

from __future__ import annotations

import sys


def quiet_trainer(trainer):
    """``trainer`` with its printing callbacks swapped for the project's bar and a stderr log."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from core.console import Progress

    class Console(TrainerCallback):
        bar: Progress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = Progress(state.max_steps, "teacher SFT", "step")

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.set(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            print(logs, file=sys.stderr, flush=True)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(Console())
    return trainer
