//! The first stage: the command line as pg_basebackup spells it (`cli`), turned into a checked
//! [`Config`] (`config`), with the `-T` mappings (`tablespace`) and the flags `--refresh` refuses (`refresh`); the `pgclone verify`
//! subcommand's flags (`verify`); the hidden `pgclone generate` (man pages, completions:
//! `generate`).

pub mod cli;
pub mod config;
pub mod generate;
pub mod refresh;
pub mod tablespace;
pub mod verify;

pub use config::Config;
