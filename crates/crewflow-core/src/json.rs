//! The JSON text of states, written fast.
//!
//! A checkpoint writes the whole state's text (a delta is computed from it), so its cost grows
//! with the state: for a 100 KB state of strings, serde_json's byte-at-a-time string escaping
//! was about a third of a persisted step. `sonic-rs` writes the same text (the same escapes,
//! number formats and field order; pinned by this module's tests) with SIMD scans, about four
//! times as fast.
//!
//! It does not know serde_json's private serialization tokens, which exist when a crate in the
//! build turns on serde_json's `raw_value` feature (axum does) or `arbitrary_precision`: it
//! would write a `RawValue` or a `Number` as an object keyed by the token. Such text names the
//! token, so text that contains it is written again by serde_json (a memchr search, a few
//! microseconds for 100 KB); so is anything sonic-rs refuses, so that an unserializable state
//! is reported in serde_json's words.

use serde::Serialize;

/// What serde_json's private tokens start with (`$serde_json::private::RawValue`, `...Number`).
const PRIVATE_TOKEN: &[u8] = b"$serde_json::private::";

/// The JSON text of `value`: the text `serde_json::to_string` writes, faster.
pub(crate) fn to_string<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    match sonic_rs::to_string(value) {
        Ok(text) if memchr::memmem::find(text.as_bytes(), PRIVATE_TOKEN).is_none() => Ok(text),
        _ => serde_json::to_string(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::{BTreeMap, HashMap};

    #[derive(Serialize)]
    enum Shape {
        Unit,
        New(i32),
        Pair(i32, String),
        Named { a: f64 },
    }

    #[derive(Serialize)]
    struct Everything {
        floats: Vec<f64>,
        ints: (i64, u64, i128, u128, i8),
        ch: char,
        shapes: Vec<Shape>,
        some: Option<String>,
        none: Option<u8>,
        int_keys: BTreeMap<i32, String>,
        bool_keys: BTreeMap<bool, u8>,
        text: String,
        value: serde_json::Value,
        unit: (),
        bytes: Vec<u8>,
        map: HashMap<String, u8>,
        f32s: Vec<f32>,
    }

    #[test]
    fn raw_values_and_private_tokens_are_written_as_serde_json_writes_them() {
        // axum turns serde_json's `raw_value` on in most servers' builds.
        let raw = serde_json::value::RawValue::from_string(r#"{"kept": [1, 2.50, "as written"]}"#.into()).unwrap();
        let state = json!({"before": 1});
        #[derive(Serialize)]
        struct WithRaw<'a> {
            raw: &'a serde_json::value::RawValue,
            value: &'a serde_json::Value,
        }
        let with_raw = WithRaw { raw: &raw, value: &state };
        let text = to_string(&with_raw).unwrap();
        assert_eq!(text, r#"{"raw":{"kept": [1, 2.50, "as written"]},"value":{"before":1}}"#);
        assert_eq!(text, serde_json::to_string(&with_raw).unwrap());

        // A number as `arbitrary_precision` writes it: a struct under the private token.
        struct Precise;
        impl Serialize for Precise {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let mut st = s.serialize_struct("$serde_json::private::Number", 1)?;
                st.serialize_field("$serde_json::private::Number", "3.14159265358979323846")?;
                st.end()
            }
        }
        assert_eq!(to_string(&[Precise]).unwrap(), serde_json::to_string(&[Precise]).unwrap());

        // A user's string that names the token is written right either way.
        let named = vec!["$serde_json::private::RawValue".to_string()];
        assert_eq!(to_string(&named).unwrap(), r#"["$serde_json::private::RawValue"]"#);
    }

    #[test]
    fn writes_the_text_serde_json_writes() {
        let value = json!({"z": 1, "a": [1.5, -0.0, 1e300, 12345678901234567890u64, "\u{1}\u{1f}\u{7f}\u{2028} é 😀"], "n": null, "t": true});
        let everything = Everything {
            floats: vec![0.1, 1e20, 1e21, 1e-7, 123456.789, f64::MAX, f64::MIN_POSITIVE, -0.0, 5e-324],
            ints: (i64::MIN, u64::MAX, i128::MIN, u128::MAX, -5),
            ch: '\n',
            shapes: vec![Shape::Unit, Shape::New(3), Shape::Pair(1, "x".into()), Shape::Named { a: 0.5 }],
            some: Some("\\\"/\t\r\u{8}\u{c}".into()),
            none: None,
            int_keys: [(1, "a".into()), (-2, "b".into())].into(),
            bool_keys: [(true, 1)].into(),
            text: "\u{0}\u{10}ü€𝄞".into(),
            value,
            unit: (),
            bytes: vec![1, 2, 255],
            map: [("k".to_string(), 1u8)].into(),
            f32s: vec![0.1, 1e10, 3.4e38],
        };
        assert_eq!(to_string(&everything).ok(), serde_json::to_string(&everything).ok());
        assert_eq!(sonic_rs::to_string(&everything).ok(), serde_json::to_string(&everything).ok());
        let large: Vec<String> = (0..100).map(|i| format!("{i:03}{}\"\n", "y".repeat(1000))).collect();
        assert_eq!(sonic_rs::to_string(&large).ok(), serde_json::to_string(&large).ok());
        // Not a number: `null` both ways.
        assert_eq!(to_string(&[f64::NAN, f64::INFINITY]).ok().as_deref(), Some("[null,null]"));
    }

    #[test]
    fn an_unserializable_value_fails_in_serde_jsons_words() {
        let bad: BTreeMap<Vec<u8>, u8> = [(vec![1], 1)].into();
        let error = to_string(&bad).err().map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("key must be a string"));
    }
}
