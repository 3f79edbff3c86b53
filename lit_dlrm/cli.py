"""What both scripts' ``LightningCLI`` subclasses share: a readable error for a binary ``--config``."""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI


class CLI(LightningCLI):
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except UnicodeDecodeError as err:  # jsonargparse reads --config files as text, unguarded
            parser.error(f"--config: not a UTF-8 text (YAML) file: {err}")
