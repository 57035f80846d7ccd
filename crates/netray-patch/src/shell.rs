//! Shell-word splitting for one simple command: quotes and backslashes as `sh` reads them;
//! operators, redirections, expansions and comments are refused.

/// Split `s` into words. Errors name the construct that is not one simple command.
pub fn split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('"' | '\\' | '$' | '`')) => cur.push(x),
                            Some('\n') => {}
                            Some(x) => {
                                cur.push('\\');
                                cur.push(x);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some('$') => {
                            return Err(
                                "shell expansion `$` is not supported: write the value itself"
                                    .into(),
                            );
                        }
                        Some('`') => {
                            return Err("command substitution is not supported".into());
                        }
                        Some(x) => cur.push(x),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(x) => {
                    in_word = true;
                    cur.push(x);
                }
                None => return Err("trailing backslash".into()),
            },
            ';' | '|' | '&' => {
                let op = match (c, chars.peek()) {
                    ('|', Some('|')) => "||",
                    ('&', Some('&')) => "&&",
                    (';', _) => ";",
                    ('|', _) => "|",
                    _ => "&",
                };
                return Err(format!(
                    "shell operator `{op}` is not supported: give one command per fix"
                ));
            }
            '<' | '>' => {
                return Err(format!("redirection `{c}` is not supported"));
            }
            '$' => {
                return Err(if chars.peek() == Some(&'(') {
                    "command substitution `$(...)` is not supported".into()
                } else {
                    "shell expansion `$` is not supported: write the value itself".into()
                });
            }
            '`' => return Err("command substitution is not supported".into()),
            '(' | ')' => return Err(format!("subshell `{c}` is not supported")),
            '#' if !in_word => {
                return Err("a shell comment `#` is not supported".into());
            }
            _ => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Quote a word for display the way a shell would read it back.
pub fn quote(w: &str) -> String {
    if !w.is_empty()
        && w.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '-' | '_' | '.' | '/' | ':' | ',' | '=' | '@' | '+' | '%' | '!'
                )
        })
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert_eq!(
            split(r#"iptables -A X -m comment --comment "a b" -j 'DROP'"#).unwrap(),
            [
                "iptables",
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                "a b",
                "-j",
                "DROP"
            ]
        );
        assert_eq!(split(r"a\ b c").unwrap(), ["a b", "c"]);
        assert_eq!(split(r#""x\"y" ''"#).unwrap(), ["x\"y", ""]);
        assert_eq!(split("  ").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn refused() {
        for s in [
            "a; b", "a | b", "a && b", "a > f", "a $(b)", "a `b`", "echo $X", "a 'b", "a \"b",
            "a #c", "a & ",
        ] {
            assert!(split(s).is_err(), "{s}");
        }
        assert_eq!(split("a ';' '$x'").unwrap(), ["a", ";", "$x"]);
        assert_eq!(split("a#b").unwrap(), ["a#b"]);
    }
}
