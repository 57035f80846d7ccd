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

/// The installed layer; [`Guard::finish`] restores the descriptors and drains the pipes.
pub struct Guard {
    /// (descriptor, saved original, reader thread done signal)
    streams: Vec<(i32, i32, mpsc::Receiver<()>, JoinHandle<()>)>,
}

/// Install the layer on descriptors 1 and 2; `None` (output left as it is) when the
/// descriptors cannot be redirected.
pub fn install() -> Option<Guard> {
    let mut streams = Vec::new();
    for (fd, max_line) in [(1, None), (2, Some(MAX_STDERR_LINE))] {
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
            let h = std::thread::spawn(move || pump(reader, out, max_line, tx));
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
fn pump(mut from: File, mut to: File, max_line: Option<usize>, done: mpsc::Sender<()>) {
    let mut esc = Escaper::new(max_line);
    let mut buf = vec![0u8; 64 << 10];
    let mut out = Vec::with_capacity(80 << 10);
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.clear();
                esc.feed(&buf[..n], &mut out);
                if to.write_all(&out).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    out.clear();
    esc.finish(&mut out);
    let _ = to.write_all(&out);
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
