//! A client's JSON request body, read without building a document tree: its top-level fields are
//! kept as their raw JSON text in the client's order, the few the gateway needs are parsed when asked
//! for, the prompt is bounded in one pass over the text, and the body sent upstream is the client's
//! text with the gateway's own fields set.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Tokens an image in a prompt may cost at most (OpenAI's high-detail tiles stay well below this).
pub const IMAGE_TOKENS: i64 = 2048;

/// A request body: its top-level fields and the ones the gateway sets.
#[derive(Debug)]
pub struct RequestBody<'a> {
    /// The client's fields, in its order (a key given twice: its last value, as a JSON parser reads
    /// it, at the last place).
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// Fields the gateway set, as JSON text; they replace the client's.
    set: Vec<(&'static str, String)>,
    /// The client's body's length: about what the body sent upstream takes.
    len: usize,
    /// The client gave a key more than once.
    repeated: bool,
}

impl<'a> RequestBody<'a> {
    /// Reads `body`, which must be a JSON object.
    pub fn parse(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        let Fields { fields, repeated } = serde_json::from_slice(body)?;
        Ok(Self {
            fields,
            set: Vec::new(),
            len: body.len(),
            repeated,
        })
    }

    /// The client's value of `name`, as JSON text.
    fn raw(&self, name: &str) -> Option<&'a RawValue> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// `name`'s value as the client wrote it (JSON text), if it gave one.
    pub fn given(&self, name: &str) -> Option<&'a str> {
        self.raw(name).map(RawValue::get)
    }

    /// `name`'s value if it is a string.
    pub fn str(&self, name: &str) -> Option<Cow<'a, str>> {
        let raw = self.raw(name)?;
        let mut de = serde_json::Deserializer::from_str(raw.get());
        Key::deserialize(&mut de).ok().map(|k| k.0)
    }

    /// `name`'s value if it is a boolean.
    pub fn bool(&self, name: &str) -> Option<bool> {
        serde_json::from_str(self.raw(name)?.get()).ok()
    }

    /// `name`'s value if it is an integer that fits an `i64`.
    pub fn i64(&self, name: &str) -> Option<i64> {
        serde_json::from_str(self.raw(name)?.get()).ok()
    }

    /// `name`'s value if it is an object.
    pub fn object(&self, name: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        serde_json::from_str(self.raw(name)?.get()).ok()
    }

    /// Sets `name` to `value` in the body sent upstream.
    pub fn set(&mut self, name: &'static str, value: &impl serde::Serialize) {
        let text = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
        match self.set.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = text,
            None => self.set.push((name, text)),
        }
    }

    /// Whether the client's own text can go upstream as it is, for `model` as the model's name
    /// there: the gateway set no field, the name is the client's, and no key is given twice (an
    /// upstream's parser might read the first value, where the gateway read the last).
    pub fn unchanged(&self, model: &str) -> bool {
        self.set.is_empty() && !self.repeated && self.str("model").as_deref() == Some(model)
    }

    /// The body to send upstream, with `model` as the model's name there.
    pub fn write(&self, model: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len + 64);
        out.push(b'{');
        let mut first = true;
        let mut field = |out: &mut Vec<u8>, key: &str, value: &[u8]| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            // A `str` is always valid JSON string content once escaped: this cannot fail.
            let _ = serde_json::to_writer(&mut *out, key);
            out.push(b':');
            out.extend_from_slice(value);
        };
        for (k, v) in &self.fields {
            if k != "model" && !self.set.iter().any(|(s, _)| s == k) {
                field(&mut out, k, v.get().as_bytes());
            }
        }
        for (k, v) in &self.set {
            field(&mut out, k, v.as_bytes());
        }
        let model = serde_json::to_string(model).unwrap_or_default();
        field(&mut out, "model", model.as_bytes());
        out.push(b'}');
        out
    }

    /// An upper bound of the prompt's tokens: a token is at least one byte of text, so the bytes of
    /// every string the upstream tokenizes (values, and the keys of nested objects such as tool
    /// schemas), plus 4 per message or part for the chat template, plus [`IMAGE_TOKENS`] per image.
    /// Top-level settings (`model`, `temperature`, …) are not prompt.
    ///
    /// Text no JSON parser would take as a whole (a lone UTF-16 surrogate in an escape, nesting deeper
    /// than 128 levels) is an error: the client must fix it, and no upstream could read it either.
    pub fn prompt_bound(&self) -> Result<i64, serde_json::Error> {
        let mut bound = 8i64;
        for (_, v) in self
            .fields
            .iter()
            .filter(|(k, _)| !matches!(&**k, "model" | "stream_options" | "metadata" | "user"))
            .filter(|(_, v)| matches!(v.get().as_bytes().first(), Some(b'"' | b'[' | b'{')))
        {
            bound = bound.saturating_add(serde_json::from_str::<Measure>(v.get())?.bound);
        }
        Ok(bound)
    }
}

/// The top-level fields of an object.
struct Fields<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    repeated: bool,
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut fields: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
                while let Some(Key(k)) = m.next_key()? {
                    fields.push((k, m.next_value()?));
                }
                let given = fields.len();
                let fields = last_of_each(fields);
                Ok(Fields {
                    repeated: fields.len() != given,
                    fields,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// Each key once, with its last value (as a JSON parser reads a repeated key), in the order of those
/// last values. A few fields are compared pairwise; many (a hostile body may hold millions) through a
/// hash set, so reading stays linear.
fn last_of_each<'a>(
    mut fields: Vec<(Cow<'a, str>, &'a RawValue)>,
) -> Vec<(Cow<'a, str>, &'a RawValue)> {
    const FEW: usize = 16;
    if fields.len() <= FEW {
        let mut i = 0;
        while i < fields.len() {
            if fields[i + 1..].iter().any(|(k, _)| *k == fields[i].0) {
                fields.remove(i);
            } else {
                i += 1;
            }
        }
        return fields;
    }
    let mut seen = std::collections::HashSet::with_capacity(fields.len());
    let mut kept: Vec<_> = fields
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    kept.reverse();
    kept
}

/// A string, borrowed from the body unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A value's share of the prompt bound (see [`RequestBody::prompt_bound`]), and whether it is a string
/// naming an image part's type.
struct Measure {
    bound: i64,
    image_type: bool,
}

impl Measure {
    fn text(s: &str) -> Self {
        Self {
            bound: i64::try_from(s.len()).unwrap_or(i64::MAX),
            image_type: matches!(s, "input_image" | "image_url"),
        }
    }

    fn scalar(bound: usize) -> Self {
        Self {
            bound: i64::try_from(bound).unwrap_or(i64::MAX),
            image_type: false,
        }
    }
}

impl<'de> Deserialize<'de> for Measure {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MeasureVisitor)
    }
}

struct MeasureVisitor;

impl<'de> Visitor<'de> for MeasureVisitor {
    type Value = Measure;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Measure, E> {
        Ok(Measure::text(s))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Measure, E> {
        Ok(Measure::scalar(1))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Measure, E> {
        Ok(Measure::scalar(1))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Measure, E> {
        Ok(Measure::scalar(n.to_string().len()))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Measure, E> {
        Ok(Measure::scalar(n.to_string().len()))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Measure, E> {
        Ok(Measure::scalar(
            serde_json::Number::from_f64(n).map_or(4, |n| n.to_string().len()),
        ))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Measure, A::Error> {
        let mut bound = 0i64;
        while let Some(m) = s.next_element::<Measure>()? {
            bound = bound.saturating_add(m.bound).saturating_add(4);
        }
        Ok(Measure {
            bound,
            image_type: false,
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Measure, A::Error> {
        let mut bound = 4i64;
        while let Some(Key(k)) = m.next_key()? {
            let v: Measure = m.next_value()?;
            let image = matches!(&*k, "image_url" | "input_image" | "file_data")
                || (k == "type" && v.image_type);
            let len = i64::try_from(k.len()).unwrap_or(0);
            bound = bound
                .saturating_add(len)
                .saturating_add(v.bound)
                .saturating_add(if image { IMAGE_TOKENS } else { 0 });
        }
        Ok(Measure {
            bound,
            image_type: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn bound(v: Value) -> i64 {
        let text = v.to_string();
        RequestBody::parse(text.as_bytes())
            .unwrap()
            .prompt_bound()
            .unwrap()
    }

    #[test]
    fn the_prompt_bound_counts_text_not_settings_and_caps_images() {
        let plain = bound(
            json!({"model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 100,
            "messages": [{"role": "user", "content": "hello there"}]}),
        );
        // 8 + (4 + "role" 4 + "user" 4 + "content" 7 + 11 + 4 for the message)
        assert_eq!(plain, 8 + 4 + 4 + 4 + 7 + 11 + 4);
        // Never fewer than the bytes of the text (one token is at least one byte).
        let text = "x".repeat(5000);
        assert!(bound(json!({"model": "m", "input": text})) >= 5000);
        // Escaped text counts as the text it stands for.
        assert_eq!(bound(json!({"model": "m", "input": "a\"b\n"})), 8 + 4);
        // Tool schemas are tokenized too, numbers and all.
        let tools = bound(
            json!({"model": "m", "messages": [], "tools": [{"type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "maxLength": 12.5}}}]}),
        );
        assert!(tools > 30 + 4, "{tools}");
        // An image costs up to IMAGE_TOKENS whatever its URL's length, by key or by part type.
        for part in [
            json!({"type": "image_url", "image_url": {"url": "https://x/y.png"}}),
            json!({"type": "input_image", "url": "https://x/y.png"}),
        ] {
            let image =
                bound(json!({"model": "m", "messages": [{"role": "user", "content": [part]}]}));
            assert!(image > IMAGE_TOKENS, "{image}");
        }
        // Settings are not prompt: the same bound with or without them.
        assert_eq!(
            bound(json!({"model": "m", "input": "hi", "user": "u-123456789",
                "metadata": {"a": "bbbbbbbbbbbb"}, "stream_options": {"include_usage": true}})),
            bound(json!({"model": "m", "input": "hi"})),
        );
    }

    #[test]
    fn text_no_parser_takes_whole_is_an_error_not_an_unbounded_prompt() {
        let surrogate = br#"{"model":"m","input":"a \ud800 b"}"#;
        let body = RequestBody::parse(surrogate).unwrap();
        assert!(body.prompt_bound().is_err());
        let deep = format!(
            r#"{{"model":"m","input":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        if let Ok(body) = RequestBody::parse(deep.as_bytes()) {
            assert!(body.prompt_bound().is_err());
        }
        let fine = format!(
            r#"{{"model":"m","input":{}"x"{}}}"#,
            "[".repeat(50),
            "]".repeat(50)
        );
        let b = RequestBody::parse(fine.as_bytes()).unwrap();
        assert!(b.prompt_bound().unwrap() > 8);
    }

    #[test]
    fn fields_are_read_as_a_json_parser_reads_them() {
        let text = br#"{"model":"gpt-\u00e9","stream":true,"max_tokens":16,"n":1.5,"stream":false,"big":18446744073709551615}"#;
        let b = RequestBody::parse(text).unwrap();
        assert_eq!(b.str("model").as_deref(), Some("gpt-é"));
        // A repeated key: its last value.
        assert_eq!(b.bool("stream"), Some(false));
        assert_eq!(b.i64("max_tokens"), Some(16));
        assert_eq!(b.i64("n"), None);
        assert_eq!(b.i64("big"), None);
        assert_eq!(b.str("max_tokens"), None);
        assert_eq!(b.i64("absent"), None);
        // Many fields, some repeated: each once, its last value.
        let mut many = String::from("{");
        for i in 0..2000 {
            many.push_str(&format!("\"k{}\":{i},", i % 500));
        }
        many.push_str("\"model\":\"m\"}");
        let b = RequestBody::parse(many.as_bytes()).unwrap();
        assert_eq!(b.i64("k7"), Some(1507));
        let sent: Value = serde_json::from_slice(&b.write("m")).unwrap();
        assert_eq!(sent.as_object().unwrap().len(), 501);
        assert_eq!(sent["k499"], 1999);
        for bad in [&b"[1]"[..], b"\"x\"", b"{\"a\":", b"{} x", b""] {
            assert!(
                RequestBody::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_clients_text_goes_upstream_as_it_is_only_when_the_gateway_changes_nothing() {
        let text = br#"{"model":"gpt-4o-mini","max_tokens":16,"messages":[]}"#;
        let mut b = RequestBody::parse(text).unwrap();
        assert!(b.unchanged("gpt-4o-mini"));
        assert!(!b.unchanged("openai/gpt-4o-mini"), "another name upstream");
        b.set("max_tokens", &32);
        assert!(!b.unchanged("gpt-4o-mini"), "a field the gateway set");
        let twice = br#"{"model":"gpt-4o-mini","max_tokens":16,"max_tokens":99999}"#;
        assert!(!RequestBody::parse(twice).unwrap().unchanged("gpt-4o-mini"));
        let escaped = br#"{"model":"gpt-4o-m\u0069ni"}"#;
        assert!(
            RequestBody::parse(escaped)
                .unwrap()
                .unchanged("gpt-4o-mini")
        );
    }

    #[test]
    fn the_body_sent_upstream_is_the_clients_with_the_gateways_fields() {
        let text = br#"{ "model" : "openrouter/mini", "messages":[{"role":"user","content":"hi \"there\""}],
            "stream":true, "stream_options":{"include_usage":false,"x":1}, "we\u0069rd":[1, 2] }"#;
        let mut b = RequestBody::parse(text).unwrap();
        let mut opts = b.object("stream_options").unwrap();
        opts.insert("include_usage".into(), true.into());
        b.set("stream_options", &opts);
        b.set("max_tokens", &50);
        b.set("max_tokens", &60);
        let sent: Value = serde_json::from_slice(&b.write("mini")).unwrap();
        assert_eq!(
            sent,
            json!({"model": "mini", "messages": [{"role": "user", "content": "hi \"there\""}],
                "stream": true, "stream_options": {"include_usage": true, "x": 1},
                "weird": [1, 2], "max_tokens": 60})
        );
        // Written twice (a failover), the same body.
        assert_eq!(b.write("mini"), b.write("mini"));
    }
}
