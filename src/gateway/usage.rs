//! Token usage as upstreams report it: in a JSON response (`usage.prompt_tokens`/`completion_tokens`
//! for chat, completions and embeddings; `usage.input_tokens`/`output_tokens` for responses) and in a
//! server-sent event stream (the final chunk of a chat stream asked for `include_usage`; the
//! `response.completed` event of a responses stream).

use serde_json::Value;

/// Input and output tokens of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub input: i64,
    /// Completion (output) tokens.
    pub output: i64,
}

impl Usage {
    /// Both together.
    pub fn total(&self) -> i64 {
        self.input + self.output
    }
}

/// The usage in a response body or an event's JSON, if it carries one.
pub fn of_json(v: &Value) -> Option<Usage> {
    let u = match v.get("usage") {
        Some(u) if u.is_object() => u,
        _ => v.get("response")?.get("usage").filter(|u| u.is_object())?,
    };
    // A count given as `null` is not given: the other naming may carry it.
    let n = |a: &str, b: &str| {
        u.get(a)
            .filter(|v| !v.is_null())
            .or_else(|| u.get(b))
            .and_then(Value::as_i64)
            .filter(|n| *n >= 0)
    };
    let input = n("prompt_tokens", "input_tokens")?;
    let output = n("completion_tokens", "output_tokens").unwrap_or(0);
    Some(Usage { input, output })
}

/// The counts of a `usage` object, either naming.
#[derive(Default, serde::Deserialize)]
struct Counts {
    prompt_tokens: Option<i64>,
    input_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    output_tokens: Option<i64>,
}

#[derive(serde::Deserialize)]
struct Inner {
    usage: Option<Counts>,
}

/// Only the fields usage is in: the rest of the body is skipped, never built into a tree.
#[derive(serde::Deserialize)]
struct Shape {
    usage: Option<Counts>,
    response: Option<Inner>,
}

/// The usage in a response body or an event's JSON text, as [`of_json`] reads it, without building
/// the whole document: only the top-level `usage` and `response` values and the counts are parsed,
/// the rest is stepped over (a body of an unusual shape falls back to [`of_json`]). What is stepped
/// over is not checked to be valid JSON: a malformed answer (`tru` for `true`, mismatched brackets)
/// still yields the counts it carries, where a parser would yield none and the request would be
/// charged its reservation.
pub fn of_bytes(body: &[u8]) -> Option<Usage> {
    if let Some([usage, response]) = top_level(body) {
        let usage = usage.map(read_counts);
        match (usage, response.map(serde_json::from_slice::<Inner>)) {
            (Some(Ok(Some(c))), _) => return counts(c),
            (Some(Ok(None)) | None, None) => return None,
            (Some(Ok(None)) | None, Some(Ok(r))) => return r.usage.and_then(counts),
            _ => {}
        }
    }
    let Ok(s) = serde_json::from_slice::<Shape>(body) else {
        return serde_json::from_slice::<Value>(body)
            .ok()
            .as_ref()
            .and_then(of_json);
    };
    counts(s.usage.or(s.response.and_then(|r| r.usage))?)
}

/// A `usage` value's counts: by the scanner when it is an object whose counts are plain integers
/// (what upstreams send), else by serde.
fn read_counts(usage: &[u8]) -> serde_json::Result<Option<Counts>> {
    match scan_counts(usage) {
        Some(c) => Ok(Some(c)),
        None => serde_json::from_slice(usage),
    }
}

/// The counts of a `usage` object whose keys have no escapes, whose counts are integers and appear
/// once; `None` for anything else (the caller asks serde).
fn scan_counts(usage: &[u8]) -> Option<Counts> {
    let mut c = Counts::default();
    Scan { b: usage, i: 0 }.object(|key, value| {
        let slot = match key {
            b"prompt_tokens" => &mut c.prompt_tokens,
            b"input_tokens" => &mut c.input_tokens,
            b"completion_tokens" => &mut c.completion_tokens,
            b"output_tokens" => &mut c.output_tokens,
            k if k.contains(&b'\\') => return None,
            _ => return Some(()),
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(integer(value)?);
        Some(())
    })?;
    Some(c)
}

/// A JSON count: digits with no leading zero, fitting an `i64` (a sign, a fraction or an exponent
/// is left to serde, which reads `-0` as a float).
fn integer(text: &[u8]) -> Option<i64> {
    let plain = !text.is_empty()
        && text.iter().all(u8::is_ascii_digit)
        && (text.len() == 1 || text[0] != b'0');
    if !plain {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn counts(c: Counts) -> Option<Usage> {
    let n = |a: Option<i64>, b: Option<i64>| a.or(b).filter(|n| *n >= 0);
    Some(Usage {
        input: n(c.prompt_tokens, c.input_tokens)?,
        output: n(c.completion_tokens, c.output_tokens).unwrap_or(0),
    })
}

/// The raw text of the top-level `usage` and `response` values of a JSON object, found by stepping
/// over the rest without parsing it; `None` when the text is not an object this reader can step
/// through (a key with escapes, brackets that do not balance, text after the end): the caller then
/// parses the whole document.
fn top_level(body: &[u8]) -> Option<[Option<&[u8]>; 2]> {
    let mut found = [None, None];
    Scan { b: body, i: 0 }.object(|key, value| {
        match key {
            b"usage" => found[0] = Some(value),
            b"response" => found[1] = Some(value),
            k if k.contains(&b'\\') => return None,
            _ => {}
        }
        Some(())
    })?;
    Some(found)
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    /// Walks the object that is the whole text, calling `each` with every field's raw key (no quotes)
    /// and raw value; `None` when the text is not one object, or `each` says `None`.
    fn object(mut self, mut each: impl FnMut(&'a [u8], &'a [u8]) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                self.expect(b'"')?;
                let key = self.string()?;
                self.expect(b':')?;
                each(key, self.value()?)?;
                match self.next()? {
                    b',' => continue,
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        self.ws();
        (self.i == self.b.len()).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// The rest of a string whose opening quote was read: its raw content.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        loop {
            let at = self.i + memchr::memchr2(b'"', b'\\', self.b.get(self.i..)?)?;
            if self.b[at] == b'"' {
                self.i = at + 1;
                return Some(&self.b[start..at]);
            }
            self.i = at + 2;
        }
    }

    /// One value, stepped over: its raw text.
    fn value(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let start = self.i;
        let mut depth = 0usize;
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth = depth.checked_sub(1)?,
                _ if depth == 0 => {
                    // A number or a literal: up to the next delimiter.
                    while !matches!(
                        self.b.get(self.i),
                        None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
                    ) {
                        self.i += 1;
                    }
                }
                _ => {
                    // Inside an object or array: on to the next quote or bracket.
                    let rest = self.b.get(self.i..)?;
                    self.i += rest.iter().position(|b| STRUCTURAL[*b as usize])?;
                }
            }
            if depth == 0 {
                return Some(&self.b[start..self.i]);
            }
        }
    }
}

/// The bytes that matter when stepping over the inside of an object or array.
static STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'[' as usize] = true;
    t[b'}' as usize] = true;
    t[b']' as usize] = true;
    t
};

/// Reads usage out of an event stream as it passes, chunk by chunk, without holding more than the
/// current unfinished line.
#[derive(Debug, Default)]
pub struct SseTap {
    partial: Vec<u8>,
    /// The last usage seen.
    pub usage: Option<Usage>,
}

impl SseTap {
    /// Looks at the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(i);
            if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
            }
            rest = &tail[1..];
        }
        self.partial.extend_from_slice(rest);
        // An absurdly long line is not usage: keep memory bounded.
        if self.partial.len() > 1 << 20 {
            self.partial.clear();
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if memchr::memmem::find(data, b"\"usage\"").is_none() {
            return;
        }
        if let Some(u) = of_bytes(data) {
            self.usage = Some(u);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_is_read_from_every_response_shape() {
        let chat =
            json!({"usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}});
        assert_eq!(
            of_json(&chat),
            Some(Usage {
                input: 12,
                output: 5
            })
        );
        let emb = json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}});
        assert_eq!(
            of_json(&emb),
            Some(Usage {
                input: 8,
                output: 0
            })
        );
        let resp = json!({"usage": {"input_tokens": 3, "output_tokens": 4}});
        assert_eq!(of_json(&resp).unwrap().total(), 7);
        let done = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 1, "output_tokens": 2}}});
        assert_eq!(
            of_json(&done),
            Some(Usage {
                input: 1,
                output: 2
            })
        );
        for v in [&chat, &emb, &resp, &done] {
            assert_eq!(of_bytes(v.to_string().as_bytes()), of_json(v), "{v}");
        }
        for odd in [
            json!({"usage": "none", "response": {"usage": {"input_tokens": 1}}}),
            json!({"usage": {"prompt_tokens": -1}}),
            json!({"usage": null}),
            json!({"choices": []}),
        ] {
            assert_eq!(of_bytes(odd.to_string().as_bytes()), of_json(&odd), "{odd}");
        }
        assert_eq!(of_bytes(b"not json"), None);
        assert_eq!(of_json(&json!({"usage": null})), None);
        assert_eq!(of_json(&json!({"choices": []})), None);
        assert_eq!(of_json(&json!({"usage": {"prompt_tokens": -1}})), None);
    }

    #[test]
    fn stepping_over_the_body_reads_what_a_parser_reads() {
        let bodies = [
            // Usage nested deeper, or inside strings, is not the response's.
            r#"{"choices":[{"message":{"content":"\"usage\": {\"prompt_tokens\": 1}","usage":{"prompt_tokens":2}}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            r#"{"data":[{"usage":{"prompt_tokens":9}}],"x":"}]\\","usage" : { "prompt_tokens" : 5 } }"#,
            "{\n  \"id\": \"a\",\n  \"usage\": {\"input_tokens\": 6, \"output_tokens\": 7},\n  \"n\": -1.5e3, \"t\": true, \"z\": null\n}\n",
            r#"{"response":{"usage":{"input_tokens":1,"output_tokens":2}},"usage":null}"#,
            r#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":8}}"#,
            r#"{"us\u0061ge":{"prompt_tokens":3}}"#,
            r#"{"usage":{"prompt_tokens":2.5}}"#,
            r#"{"usage":[1],"response":{"usage":{"input_tokens":1}}}"#,
            r#"{"response":"done"}"#,
            r#"{}"#,
            r#"[{"usage":{"prompt_tokens":1}}]"#,
            // Not JSON: nothing is read from it.
            r#"{"usage":{"prompt_tokens":1}"#,
            r#"{"usage":{"prompt_tokens":1}} trailing"#,
            r#"{"a":"unterminated,"usage":{"prompt_tokens":1}}"#,
            r#"{"a":]], "usage":{"prompt_tokens":1}}"#,
            // The counts as upstreams send them, and as they should not.
            r#"{"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"accepted_prediction_tokens":[1,{"a":"}"}]}}}"#,
            r#"{"usage":{ "note":"a \"quoted\" }] brace", "prompt_tokens" :7 ,"completion_tokens": 0 }}"#,
            r#"{"usage":{"prompt_tokens":null,"input_tokens":4}}"#,
            r#"{"usage":{"prompt_tokens":-3,"completion_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":1,"prompt_tokens":7}}"#,
            r#"{"usage":{"prompt_tokens":01}}"#,
            r#"{"usage":{"prompt_tokens":-0,"completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":1e2}}"#,
            r#"{"usage":{"prompt_tokens":99999999999999999999}}"#,
            r#"{"usage":{"prompt_tokens":"5"}}"#,
            r#"{"usage":{"pr\u006fmpt_tokens":5}}"#,
            r#"{"usage":{}}"#,
            r#"{"usage":{"prompt_tokens":5,}}"#,
        ];
        for body in bodies {
            let parsed = serde_json::from_str::<Value>(body).ok();
            assert_eq!(
                of_bytes(body.as_bytes()),
                parsed.as_ref().and_then(of_json),
                "{body}"
            );
        }
        assert_eq!(
            of_bytes(bodies[0].as_bytes()),
            Some(Usage {
                input: 3,
                output: 4
            })
        );
    }

    #[test]
    fn the_tap_finds_usage_across_chunk_boundaries() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n"
        )
        .as_bytes();
        for cut in 1..stream.len() {
            let mut t = SseTap::default();
            t.feed(&stream[..cut]);
            t.feed(&stream[cut..]);
            assert_eq!(
                t.usage,
                Some(Usage {
                    input: 9,
                    output: 2
                }),
                "cut at {cut}"
            );
        }
        let mut t = SseTap::default();
        t.feed(b"data: {\"choices\":[{\"delta\":{}}]}\n\ndata: [DONE]\n\n");
        assert_eq!(t.usage, None);
    }
}
