//! What pgclone prints on stderr: `pgclone: message` lines through `tracing` (info with `-v`,
//! debug with `-vv`, trace with `-vvv`; warnings always), server notices the way libpq prints
//! them, and the final error.

use std::fmt;
use std::io::Write;

use pgclone_proto::ServerError;

use crate::program;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` target of messages already worded in full the libpq way (`WARNING: ...`):
/// they are printed as they are, without the `pgclone:` prefix.
pub const VERBATIM: &str = "pgclone::verbatim";

/// Formats every event as `pgclone: [warning: |error: ]message`, or as the bare message for
/// the [`VERBATIM`] target.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if event.metadata().target() == VERBATIM {
            ctx.field_format().format_fields(writer.by_ref(), event)?;
            return writeln!(writer);
        }
        write!(writer, "{}: ", program::name())?;
        match *event.metadata().level() {
            Level::WARN => write!(writer, "warning: ")?,
            Level::ERROR => write!(writer, "error: ")?,
            Level::DEBUG | Level::TRACE => write!(writer, "{}: ", event.metadata().target())?,
            Level::INFO => {}
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Installs the stderr logger for this verbosity (`-v` count).
pub fn init(verbosity: u8) {
    let level = match verbosity {
        0 => Level::WARN,
        1 => Level::INFO,
        2 => Level::DEBUG,
        _ => Level::TRACE,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .event_format(Plain)
        .try_init();
}

/// Prints a server NOTICE or WARNING the way libpq's default notice processor does.
pub fn notice(n: &ServerError) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{n}");
}

/// Prints an error line (and the usage hint to `pgclone --help` when it is a usage error).
pub fn error(message: &str, help_hint: bool) {
    print_error(message, help_hint.then_some(program::name()));
}

/// Prints a usage error and the hint to `command --help` (`pgclone` or `pgclone verify`).
pub fn usage_error(message: &str, command: &str) {
    print_error(message, Some(command));
}

fn print_error(message: &str, hint_to: Option<&str>) {
    let mut err = std::io::stderr().lock();
    let name = program::name();
    let _ = writeln!(err, "{name}: error: {message}");
    if let Some(command) = hint_to {
        let _ = writeln!(
            err,
            "{name}: hint: Try \"{command} --help\" for more information."
        );
    }
}
