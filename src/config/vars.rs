//! `${VAR}` and `${VAR:-default}` in the config file, for secrets and
//! per-host values (README, "Configuration").
//!
//! Expanded in the text before it is parsed, line by line, so every
//! problem still names its line: a variable that is not set and has no
//! default names the key it stands in. Inside a `"…"` string the value is
//! escaped as TOML wants it (a password may hold `"` or `\`); inside a
//! `'…'` string, where TOML has no escapes, a value that cannot be written
//! there is an error. `$${` is a literal `${`. Comments are left alone.

use super::Problem;

/// Where on a line the scan is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum In {
    Code,
    Basic,
    Literal,
}

/// `text` with every `${…}` replaced, or every problem found.
pub(super) fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut table = String::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            table = trimmed
                .trim_end()
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
        }
        let key = match line.split_once('=') {
            Some((k, _)) if !table.is_empty() => format!("{table}.{}", k.trim()),
            Some((k, _)) => k.trim().to_string(),
            None => table.clone(),
        };
        let mut problem = |message: String| {
            problems.push(Problem {
                key: key.clone(),
                line: Some(n + 1),
                message,
            })
        };
        let mut state = In::Code;
        let mut rest = line;
        while let Some(c) = rest.chars().next() {
            if rest.starts_with("$${") {
                out.push_str("${");
                rest = &rest[3..];
                continue;
            }
            if rest.starts_with("${") {
                let Some(end) = rest.find('}') else {
                    problem("`${` without its closing `}`".into());
                    out.push_str(rest);
                    break;
                };
                let inner = &rest[2..end];
                let (name, default) = match inner.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (inner, None),
                };
                let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    problem(format!(
                        "`${{{inner}}}`: a variable name is letters, digits and `_`"
                    ));
                } else {
                    match lookup(name).or_else(|| default.map(str::to_string)) {
                        Some(value) => match state {
                            In::Basic => out.push_str(&escape_basic(&value)),
                            In::Literal if value.contains(['\'', '\n', '\r']) => problem(format!(
                                "the value of ${name} holds a quote or a line break, which a '…' string cannot; use \"…\""
                            )),
                            _ => out.push_str(&value),
                        },
                        None => problem(format!(
                            "environment variable {name} is not set (give a default with ${{{name}:-default}})"
                        )),
                    }
                }
                rest = &rest[end + 1..];
                continue;
            }
            match (state, c) {
                (In::Code, '#') => {
                    out.push_str(rest);
                    break;
                }
                (In::Code, '"') => state = In::Basic,
                (In::Code, '\'') => state = In::Literal,
                (In::Basic, '"') | (In::Literal, '\'') => state = In::Code,
                (In::Basic, '\\') => {
                    // An escape: the next character is not a quote.
                    let mut two = rest.chars();
                    two.next();
                    if let Some(next) = two.next() {
                        out.push(c);
                        out.push(next);
                        rest = &rest[c.len_utf8() + next.len_utf8()..];
                        continue;
                    }
                }
                _ => {}
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// `value` as the inside of a TOML basic string.
fn escape_basic(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if c.is_control() => s.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PW" => Some(r#"p"a\ss"#.into()),
            "ROWS" => Some("1000".into()),
            "HOST" => Some("db1".into()),
            "Q" => Some("it's".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_and_defaults() {
        let text = "[clickhouse]\nurl = \"http://${HOST}:${PORT:-8123}\"\npassword = \"${PW}\"\n# ${NOT_SET} in a comment\n[batch]\nmax_rows = ${ROWS} # ${ALSO_NOT}\nmax_wait = '${WAIT:-1s}'\nliteral = \"$${HOST}\"\n";
        let got = expand(text, env).unwrap();
        assert_eq!(
            got,
            "[clickhouse]\nurl = \"http://db1:8123\"\npassword = \"p\\\"a\\\\ss\"\n# ${NOT_SET} in a comment\n[batch]\nmax_rows = 1000 # ${ALSO_NOT}\nmax_wait = '1s'\nliteral = \"${HOST}\"\n"
        );
        // The escaped password reads back as it was.
        let v: toml::Table =
            toml::from_str(&got.replace("[batch]\nmax_rows", "[b]\nmax_rows")).unwrap();
        assert_eq!(v["clickhouse"]["password"].as_str(), Some(r#"p"a\ss"#));
    }

    #[test]
    fn an_unset_variable_names_its_key_and_line() {
        let text = "[clickhouse]\nurl = \"http://x\"\npassword = \"${CH_PASSWORD}\"\n[[source]]\npaths = [\"${LOGS}/*.jsonl\", \"${BAD NAME}\"]\nx = '${Q}'\ny = \"${OPEN\"\n";
        let problems = expand(text, env).unwrap_err();
        let seen: Vec<(String, Option<usize>)> =
            problems.iter().map(|p| (p.key.clone(), p.line)).collect();
        assert_eq!(
            seen,
            [
                ("clickhouse.password".to_string(), Some(3)),
                ("source.paths".to_string(), Some(5)),
                ("source.paths".to_string(), Some(5)),
                ("source.x".to_string(), Some(6)),
                ("source.y".to_string(), Some(7)),
            ]
        );
        assert!(problems[0].message.contains("CH_PASSWORD is not set"));
        assert!(problems[3].message.contains("'…' string"));
    }

    #[test]
    fn text_without_variables_is_untouched() {
        let text = "a = \"$HOME\" # $ {x}\n";
        assert_eq!(expand(text, env).unwrap(), text);
    }
}
