//! Text from input made safe to print: control characters escaped (so that an ESC sequence in
//! a rule comment or a node name cannot drive the terminal) and long quotes clipped (so that a
//! 10 MB garbage line is not echoed in full). Every renderer of input-derived text may call
//! these; the `netray` binary also escapes everything it prints through [`Escaper`].

use std::borrow::Cow;

/// Longest quote of input kept by [`clip_quote`]: 200 characters.
pub const MAX_QUOTE_CHARS: usize = 200;

/// Whether `c` must not reach a terminal raw: C0 controls except `\n` and `\t`, DEL, and the
/// C1 controls (U+0080–U+009F, which some terminals read as CSI and friends).
pub fn is_unsafe_control(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c)
}

/// `s` with every unsafe control character (see [`is_unsafe_control`]) written as `\xNN` (C0)
/// or `\u00NN` (DEL and C1: also a valid escape inside a JSON string, where serializers leave
/// these characters raw); borrowed when nothing needs escaping.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// Like [`escape_controls`] but also escapes `\n` and `\t`: for a one-line quote.
pub fn escape_line(s: &str) -> Cow<'_, str> {
    if !s
        .chars()
        .any(|c| is_unsafe_control(c) || c == '\n' || c == '\t')
    {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => push_escaped(&mut out, c),
        }
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    use std::fmt::Write;
    if is_unsafe_control(c) {
        let n = c as u32;
        if n < 0x7f {
            let _ = write!(out, "\\x{n:02x}");
        } else {
            let _ = write!(out, "\\u{n:04x}");
        }
    } else {
        out.push(c);
    }
}

/// `s` cut to at most `max` characters, with `… (N bytes)` (the full length) appended when
/// cut; borrowed when short enough. Does not escape: combine with [`escape_line`].
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some((at, _)) => Cow::Owned(format!("{}… ({} bytes)", &s[..at], s.len())),
    }
}

/// A quote of input for an error or warning: clipped to [`MAX_QUOTE_CHARS`] and escaped as one
/// line.
pub fn clip_quote(s: &str) -> String {
    escape_line(&clip(s, MAX_QUOTE_CHARS)).into_owned()
}

/// `N thing` / `N things`: the one place counts are put into words (`1 finding`,
/// `2 findings`, `0 branches`). `plural` is the plural form (`"branches"`, `"entries"`).
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// `text` as a sentence: ending with a full stop, and its first letter capitalised only when
/// the first word is a plain English word — never an identifier such as `flannel.1`, `eth0`,
/// `cni0:` or `web-0`, which keep their spelling.
pub fn sentence(text: &str) -> String {
    let t = text.trim();
    let first: &str = t.split(' ').next().unwrap_or("");
    let plain_word =
        t.contains(' ') && !first.is_empty() && first.chars().all(|c| c.is_ascii_lowercase());
    let mut out: String = if plain_word {
        t.chars()
            .take(1)
            .flat_map(char::to_uppercase)
            .chain(t.chars().skip(1))
            .collect()
    } else {
        t.to_string()
    };
    if !out.is_empty() && !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

/// A streaming escaper for bytes on their way to a terminal: unsafe control characters (see
/// [`is_unsafe_control`]) become `\xNN` / `\u00NN`, bytes that are not UTF-8 become `\xNN`,
/// and, when `max_line` is set, lines longer than that many bytes are cut with
/// `… (N bytes)`. Input may be split anywhere, even inside a UTF-8 sequence.
#[derive(Debug, Default)]
pub struct Escaper {
    pending: Vec<u8>,
    max_line: Option<usize>,
    line_len: usize,
}

impl Escaper {
    /// A new escaper; `max_line`: cut lines longer than this many bytes.
    pub fn new(max_line: Option<usize>) -> Escaper {
        Escaper {
            pending: Vec::new(),
            max_line,
            line_len: 0,
        }
    }

    /// Escape `input`, appending to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(input);
        let mut rest: &[u8] = &buf;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.text(s, out);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // SAFETY-free: `good` is valid UTF-8 by construction.
                    self.text(std::str::from_utf8(good).unwrap_or_default(), out);
                    match e.error_len() {
                        Some(n) => {
                            for b in &bad[..n] {
                                self.piece(format!("\\x{b:02x}").as_bytes(), 1, out);
                            }
                            rest = &bad[n..];
                        }
                        None => {
                            // An incomplete sequence at the end: wait for more.
                            self.pending = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Flush what is left (an incomplete UTF-8 sequence is escaped byte by byte; a cut line
    /// gets its length).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        for b in std::mem::take(&mut self.pending) {
            self.piece(format!("\\x{b:02x}").as_bytes(), 1, out);
        }
        self.end_line(out);
    }

    fn text(&mut self, s: &str, out: &mut Vec<u8>) {
        let mut tmp = [0u8; 4];
        for c in s.chars() {
            if c == '\n' {
                self.end_line(out);
                out.push(b'\n');
            } else if is_unsafe_control(c) {
                let mut e = String::new();
                push_escaped(&mut e, c);
                self.piece(e.as_bytes(), c.len_utf8(), out);
            } else {
                self.piece(c.encode_utf8(&mut tmp).as_bytes(), c.len_utf8(), out);
            }
        }
    }

    /// Emit `bytes` standing for `len` input bytes, unless the line is over its limit.
    fn piece(&mut self, bytes: &[u8], len: usize, out: &mut Vec<u8>) {
        let before = self.line_len;
        self.line_len += len;
        match self.max_line {
            Some(max) if self.line_len > max => {
                if before <= max {
                    out.extend_from_slice("…".as_bytes());
                }
            }
            _ => out.extend_from_slice(bytes),
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        if let Some(max) = self.max_line
            && self.line_len > max
        {
            out.extend_from_slice(format!(" ({} bytes)", self.line_len).as_bytes());
        }
        self.line_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(max: Option<usize>, chunks: &[&[u8]]) -> String {
        let mut e = Escaper::new(max);
        let mut out = Vec::new();
        for c in chunks {
            e.feed(c, &mut out);
        }
        e.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn counts_and_sentences() {
        assert_eq!(count(1, "finding", "findings"), "1 finding");
        assert_eq!(count(0, "branch", "branches"), "0 branches");
        assert_eq!(count(6, "branch", "branches"), "6 branches");
        assert_eq!(sentence("no route to 10.0.0.1"), "No route to 10.0.0.1.");
        assert_eq!(
            sentence("flannel.1: no neighbour"),
            "flannel.1: no neighbour."
        );
        assert_eq!(sentence("eth0 is down."), "eth0 is down.");
        assert_eq!(sentence("web-0 refuses"), "web-0 refuses.");
        assert_eq!(sentence("dropped"), "dropped.");
    }

    #[test]
    fn escapes_controls_keeps_newline_tab_and_utf8() {
        assert_eq!(escape_controls("a\tb\n"), "a\tb\n");
        assert_eq!(
            escape_controls("\x1b[31mred\x07\r\x7f"),
            "\\x1b[31mred\\x07\\x0d\\u007f"
        );
        assert_eq!(escape_controls("é\u{9b}2J"), "é\\u009b2J");
        assert_eq!(escape_line("a\nb\t"), "a\\nb\\t");
    }

    #[test]
    fn clips_long_quotes_with_length() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("abcdef", 3), "abc… (6 bytes)");
        let long = "x".repeat(10_000_000);
        let q = clip_quote(&long);
        assert!(q.len() < 300 && q.ends_with("(10000000 bytes)"), "{q}");
    }

    #[test]
    fn streaming_escaper_handles_split_utf8_and_bad_bytes() {
        let s = "é\x1b]0;x\x07ok\n".as_bytes();
        let (a, b) = s.split_at(1);
        assert_eq!(run(None, &[a, b]), "é\\x1b]0;x\\x07ok\n");
        assert_eq!(run(None, &[b"\xff\x9bz\n", b"\xc3"]), "\\xff\\x9bz\n\\xc3");
    }

    #[test]
    fn streaming_escaper_cuts_long_lines() {
        let long = "y".repeat(5000);
        let out = run(Some(100), &[long.as_bytes(), b"\nshort\n"]);
        assert_eq!(out, format!("{}… (5000 bytes)\nshort\n", "y".repeat(100)));
    }
}
