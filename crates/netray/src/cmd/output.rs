//! Report output in the three formats of `-o`: text (the command's own renderer), JSON and
//! YAML (one serialization, numbers that are not integers rounded for people).

use serde::Serialize;

use super::{CmdError, Format};

/// Significant digits kept in printed fractions (shares, probabilities): 6.
pub const SIGNIFICANT_DIGITS: usize = 6;

/// Print `value` as JSON or YAML, or call `text` for the text format. Fractions are rounded
/// to [`SIGNIFICANT_DIGITS`] in the output only (`0.24999999994179234` → `0.25`); the math
/// behind them is unchanged.
pub fn print<T: Serialize>(value: &T, format: Format, text: impl FnOnce()) -> Result<(), CmdError> {
    match format {
        Format::Text => text(),
        Format::Json => println!("{}", serde_json::to_string_pretty(&rounded(value)?)?),
        Format::Yaml => print!("{}", serde_norway::to_string(&rounded(value)?)?),
    }
    Ok(())
}

/// `value` as a JSON value with its fractions rounded (see [`print`]).
pub fn rounded<T: Serialize>(value: &T) -> Result<serde_json::Value, CmdError> {
    let mut v = serde_json::to_value(value)?;
    round_in(&mut v);
    Ok(v)
}

fn round_in(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(r) = n.as_f64().map(round).and_then(serde_json::Number::from_f64) {
                *n = r;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(round_in),
        Value::Object(o) => o.values_mut().for_each(round_in),
        _ => {}
    }
}

/// `x` to [`SIGNIFICANT_DIGITS`] significant digits.
pub fn round(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    format!("{:.*e}", SIGNIFICANT_DIGITS - 1, x)
        .parse()
        .unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_rounded_integers_kept() {
        assert_eq!(round(0.24999999994179234), 0.25);
        assert_eq!(round(1.0 / 3.0), 0.333333);
        assert_eq!(round(0.0), 0.0);
        let v = rounded(&serde_json::json!({"a": [0.1666666665, 3], "b": 12345678})).unwrap();
        assert_eq!(v.to_string(), r#"{"a":[0.166667,3],"b":12345678}"#);
    }
}
