//! The `pgclone` command.

fn main() -> std::process::ExitCode {
    pgclone::main_with_args(std::env::args_os())
}
