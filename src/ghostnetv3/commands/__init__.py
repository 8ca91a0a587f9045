"""Sub-commands that drive more than one layer and so sit with the CLI: `info`, `models`, `fuse`
and `predict`. Each module exposes `add_parser(subparsers)`; `ghostnetv3.cli` lists them."""
