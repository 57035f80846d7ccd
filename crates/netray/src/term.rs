//! The one escaping layer between netray and the terminal: standard output and standard error
//! are redirected into pipes whose reader threads pass everything through
//! [`netray_snapshot::text::Escaper`] to the real descriptors. So no control character from
//! input (an ESC sequence in a rule comment or a node name) reaches the terminal raw, whichever
//! renderer printed it, and no line of standard error is longer than [`MAX_STDERR_LINE`]
//! bytes (a 10 MB garbage line quoted in a warning is cut, with its length). Renderers that
//! want escaped text in a string call `netray_snapshot::text::{escape_controls, clip_quote}`.
//!
//! JSON output passes unchanged: serializers escape C0 controls themselves, and the
//! `\u00NN` form used for DEL and C1 controls is a valid JSON string escape.
//!
//! Colour is added here too, and only here: *after* escaping, whole lines are matched against
//! the fixed words netray's renderers print at fixed places (`UNREACHABLE:`, `  FAIL`,
//! `[CRITICAL]`, `netray: error:` …) and our own SGR sequences are put around them. Input can
//! therefore never emit an escape sequence (its ESC bytes were escaped before), and at worst
//! a line quoting input that happens to look like a verdict line is coloured.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use netray_snapshot::text::Escaper;

/// Longest line written to standard error: 8192 bytes; longer ones are cut with their length.
pub const MAX_STDERR_LINE: usize = 8192;

/// How long [`Guard::finish`] waits for the output to drain (a child process that inherited
/// the pipe and still runs could otherwise hold it open).
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set (to anything but the empty string) or
    /// `TERM=dumb`.
    Auto,
    /// Always (even into a pipe, even with `NO_COLOR`).
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Whether descriptor `fd` gets colour.
    pub fn enabled(self, fd: i32) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
                let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
                // SAFETY: isatty on a descriptor number only reads its state.
                !no_color && !dumb && unsafe { libc::isatty(fd) == 1 }
            }
        }
    }
}

/// Which streams get colour.
#[derive(Debug, Clone, Copy, Default)]
pub struct Colors {
    /// Standard output (text reports only).
    pub stdout: bool,
    /// Standard error (`netray: error:` / `warning:`).
    pub stderr: bool,
}

const RED: &str = "\x1b[1;31m";
const GREEN: &str = "\x1b[1;32m";
const YELLOW: &str = "\x1b[1;33m";
const CYAN: &str = "\x1b[36m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// Colour for one line of escaped output: the byte range to colour and the style, for the
/// fixed words netray prints at the start of a line.
fn highlight(line: &str) -> Option<(usize, usize, &'static str)> {
    const STARTS: &[(&str, &str)] = &[
        ("netray: error:", RED),
        ("netray: warning:", YELLOW),
        ("warning:", YELLOW),
        ("error:", RED),
        ("UNREACHABLE", RED),
        ("PARTIALLY REACHABLE", YELLOW),
        ("PARTIAL", YELLOW),
        ("UNCERTAIN", YELLOW),
        ("REACHABLE", GREEN),
        ("[CRITICAL]", RED),
        ("[WARNING]", YELLOW),
        ("[INFO]", CYAN),
        ("  FAIL", RED),
        ("  ok  ", GREEN),
        ("  UNCERTAIN:", YELLOW),
        ("root causes:", BOLD),
        ("endpoints:", BOLD),
        ("no findings: clean", GREEN),
        ("note:", CYAN),
    ];
    for (w, style) in STARTS {
        if line.starts_with(w) {
            return Some((0, w.len(), style));
        }
    }
    // `branch 3 (16.7%): DROPPED  endpoint …`: the disposition.
    if line.starts_with("branch ")
        && let Some(i) = line.find("): ")
    {
        let start = i + 3;
        let end = line[start..]
            .find(' ')
            .map(|e| start + e)
            .unwrap_or(line.len());
        let word = &line[start..end];
        let style = match word {
            "DELIVERED" | "ACCEPTED-BY-HOST" | "EXITS" => GREEN,
            "UNKNOWN" => YELLOW,
            _ => RED,
        };
        return Some((start, end, style));
    }
    for (w, style) in [("NOT proven", RED), ("(proven", GREEN)] {
        if line.starts_with("     fix ")
            && let Some(i) = line.find(w)
        {
            return Some((i, i + w.len(), style));
        }
    }
    None
}

/// `line` (escaped, no newline) with its colour, if any.
fn colour_line(line: &[u8], out: &mut Vec<u8>) {
    match std::str::from_utf8(line).ok().and_then(highlight) {
        Some((a, b, style)) => {
            out.extend_from_slice(&line[..a]);
            out.extend_from_slice(style.as_bytes());
            out.extend_from_slice(&line[a..b]);
            out.extend_from_slice(RESET.as_bytes());
            out.extend_from_slice(&line[b..]);
        }
        None => out.extend_from_slice(line),
    }
}

/// Longest partial line held back for colouring before it is passed on uncoloured.
const MAX_HELD_LINE: usize = 64 << 10;

/// Colours escaped output line by line (see [`highlight`]).
struct Colourer {
    held: Vec<u8>,
}

impl Colourer {
    fn feed(&mut self, escaped: &[u8], out: &mut Vec<u8>) {
        let mut rest = escaped;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.held.is_empty() {
                colour_line(&rest[..i], out);
            } else {
                self.held.extend_from_slice(&rest[..i]);
                colour_line(&self.held, out);
                self.held.clear();
            }
            out.push(b'\n');
            rest = &rest[i + 1..];
        }
        self.held.extend_from_slice(rest);
        if self.held.len() > MAX_HELD_LINE {
            out.append(&mut self.held);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.held.is_empty() {
            colour_line(&self.held, out);
            self.held.clear();
        }
    }
}

/// The installed layer; [`Guard::finish`] restores the descriptors and drains the pipes.
pub struct Guard {
    /// (descriptor, saved original, reader thread done signal)
    streams: Vec<(i32, i32, mpsc::Receiver<()>, JoinHandle<()>)>,
}

/// Install the layer on descriptors 1 and 2; `None` (output left as it is) when the
/// descriptors cannot be redirected.
pub fn install(colors: Colors) -> Option<Guard> {
    let mut streams = Vec::new();
    for (fd, max_line, colour) in [
        (1, None, colors.stdout),
        (2, Some(MAX_STDERR_LINE), colors.stderr),
    ] {
        // SAFETY: plain descriptor calls on descriptors this process owns; every result is
        // checked and nothing is closed that another owner holds.
        unsafe {
            let saved = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3);
            if saved < 0 {
                break;
            }
            let mut p = [0i32; 2];
            if libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                libc::close(saved);
                break;
            }
            if libc::dup2(p[1], fd) < 0 {
                libc::close(p[0]);
                libc::close(p[1]);
                libc::close(saved);
                break;
            }
            libc::close(p[1]);
            let reader = File::from_raw_fd(p[0]);
            // A duplicate of the saved descriptor, owned by the thread.
            let out_fd = libc::fcntl(saved, libc::F_DUPFD_CLOEXEC, 3);
            if out_fd < 0 {
                libc::dup2(saved, fd);
                libc::close(saved);
                break;
            }
            let out = File::from_raw_fd(out_fd);
            let (tx, rx) = mpsc::channel();
            let h = std::thread::spawn(move || pump(reader, out, max_line, colour, tx));
            streams.push((fd, saved, rx, h));
        }
    }
    if streams.is_empty() {
        None
    } else {
        Some(Guard { streams })
    }
}

/// Copy `from` to `to` through an [`Escaper`] until end of file.
/// With `colour`, the escaped text is then coloured line by line (see [`highlight`]).
fn pump(
    mut from: File,
    mut to: File,
    max_line: Option<usize>,
    colour: bool,
    done: mpsc::Sender<()>,
) {
    let mut esc = Escaper::new(max_line);
    let mut colourer = colour.then(|| Colourer { held: Vec::new() });
    let mut buf = vec![0u8; 64 << 10];
    let mut out = Vec::with_capacity(80 << 10);
    let mut coloured = Vec::new();
    // Escape first, colour second: the only escape sequences written are ours.
    let mut pass = |escaped: &[u8], last: bool, to: &mut File| -> bool {
        let bytes = match &mut colourer {
            Some(c) => {
                coloured.clear();
                c.feed(escaped, &mut coloured);
                if last {
                    c.finish(&mut coloured);
                }
                &coloured[..]
            }
            None => escaped,
        };
        to.write_all(bytes).is_ok()
    };
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.clear();
                esc.feed(&buf[..n], &mut out);
                if !pass(&out, false, &mut to) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    out.clear();
    esc.finish(&mut out);
    let _ = pass(&out, true, &mut to);
    let _ = to.flush();
    let _ = done.send(());
}

impl Guard {
    /// Flush, put the original descriptors back (closing the pipes' write ends) and wait for
    /// the readers to pass on what is left.
    pub fn finish(self) {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        for (fd, saved, _, _) in &self.streams {
            // SAFETY: restoring a descriptor saved by `install`.
            unsafe {
                libc::dup2(*saved, *fd);
                libc::close(*saved);
            }
        }
        for (_, _, done, h) in self.streams {
            if done.recv_timeout(DRAIN_WAIT).is_ok() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coloured(text: &str) -> String {
        let mut esc = Escaper::new(None);
        let mut escaped = Vec::new();
        esc.feed(text.as_bytes(), &mut escaped);
        esc.finish(&mut escaped);
        let mut c = Colourer { held: Vec::new() };
        let mut out = Vec::new();
        c.feed(&escaped, &mut out);
        c.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn verdicts_are_coloured_and_input_escapes_stay_escaped() {
        let out = coloured("UNREACHABLE: x\n  ok   a\nplain \x1b[31mred\n");
        assert!(
            out.starts_with("\x1b[1;31mUNREACHABLE\x1b[0m: x\n"),
            "{out:?}"
        );
        assert!(out.contains("\x1b[1;32m  ok  \x1b[0m a"), "{out:?}");
        // The ESC from input reached the colourer as text: no raw ESC in that line.
        assert!(out.ends_with("plain \\x1b[31mred\n"), "{out:?}");
        let out = coloured("branch 2 (50.0%): DROPPED  endpoint e\n");
        assert!(out.contains("\x1b[1;31mDROPPED\x1b[0m"), "{out:?}");
    }
}
