//! Server-sent events passed through with one change: the final usage-only chunk of a chat or
//! completions stream (`"choices": []` with a `usage` object), which the gateway asked the upstream for
//! (`stream_options.include_usage`) to meter the stream, is left out when the client did not ask for
//! it — clients that read `choices[0]` of every chunk would fail on it. Everything else goes through
//! byte for byte, as soon as its event is complete.

use axum::body::Bytes;

/// Removes usage-only events from a stream fed chunk by chunk.
#[derive(Debug, Default)]
pub struct UsageStripper {
    pending: Vec<u8>,
}

/// The end of the first complete event in `buf` (after its blank line), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(3).position(|w| w == b"\n\r\n").map(|i| i + 3);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether an event is a chunk with no choices and a usage object.
fn usage_only(event: &[u8]) -> bool {
    if !event.windows(7).any(|w| w == b"\"usage\"") {
        return false;
    }
    event
        .split(|b| *b == b'\n')
        .filter_map(|l| l.strip_prefix(b"data:"))
        .filter_map(|d| serde_json::from_slice::<serde_json::Value>(d.trim_ascii()).ok())
        .any(|v| v["choices"].as_array().is_some_and(Vec::is_empty) && v["usage"].is_object())
}

impl UsageStripper {
    /// The complete events of what arrived so far, less usage-only ones (the unfinished rest waits).
    pub fn feed(&mut self, chunk: &[u8]) -> Bytes {
        if self.pending.is_empty()
            && chunk.ends_with(b"\n\n")
            && event_end(chunk) == Some(chunk.len())
            && !usage_only(chunk)
        {
            // The common case: one whole event per chunk, passed on as it is.
            return Bytes::copy_from_slice(chunk);
        }
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut start = 0;
        while let Some(len) = event_end(&self.pending[start..]) {
            let event = &self.pending[start..start + len];
            if !usage_only(event) {
                out.extend_from_slice(event);
            }
            start += len;
        }
        self.pending.drain(..start);
        Bytes::from(out)
    }

    /// What is left when the stream ends (an unfinished event, passed on as it is).
    pub fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n"
    );
    const WITHOUT: &str = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
        "data: [DONE]\n\n"
    );

    #[test]
    fn the_usage_only_chunk_is_left_out_wherever_the_stream_is_cut() {
        for cut in 0..=STREAM.len() {
            for cut2 in cut..=STREAM.len() {
                let mut s = UsageStripper::default();
                let mut out = Vec::new();
                for part in [&STREAM[..cut], &STREAM[cut..cut2], &STREAM[cut2..]] {
                    out.extend_from_slice(&s.feed(part.as_bytes()));
                }
                out.extend_from_slice(&s.finish());
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    WITHOUT,
                    "cuts {cut} {cut2}"
                );
            }
        }
    }

    #[test]
    fn other_events_pass_unchanged_and_an_unfinished_one_at_the_end() {
        let mut s = UsageStripper::default();
        let crlf = "data: {\"choices\":[{\"delta\":{}}]}\r\n\r\n";
        assert_eq!(&s.feed(crlf.as_bytes())[..], crlf.as_bytes());
        let responses = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1}}}\n\n";
        assert_eq!(&s.feed(responses.as_bytes())[..], responses.as_bytes());
        assert!(s.feed(b"data: {\"cho").is_empty());
        assert_eq!(&s.finish()[..], b"data: {\"cho");
    }
}
