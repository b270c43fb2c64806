//! A minimal Server-Sent Events reader over a streaming HTTP response.

use futures::StreamExt;

/// One event of the stream.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Reads events from a response body.
pub struct EventReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
    current: Event,
    has_data: bool,
}

impl EventReader {
    pub fn new(response: reqwest::Response) -> Self {
        EventReader {
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
            current: Event::default(),
            has_data: false,
        }
    }

    /// Returns the next event, `Ok(None)` when the stream ends.
    pub async fn next(&mut self) -> reqwest::Result<Option<Event>> {
        loop {
            while let Some(pos) = self.buffer.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buffer.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8_lossy(&line).into_owned();
                if line.is_empty() {
                    if self.has_data {
                        let mut event = std::mem::take(&mut self.current);
                        if event.event.is_empty() {
                            event.event = "message".into();
                        }
                        self.has_data = false;
                        return Ok(Some(event));
                    }
                    self.current = Event::default();
                    continue;
                }
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((field, value)) => (field.to_string(), value.strip_prefix(' ').unwrap_or(value).to_string()),
                    None => (line.clone(), String::new()),
                };
                match field.as_str() {
                    "event" => self.current.event = value,
                    "id" => self.current.id = Some(value),
                    "data" => {
                        if self.has_data {
                            self.current.data.push('\n');
                        }
                        self.current.data.push_str(&value);
                        self.has_data = true;
                    }
                    _ => {}
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(err)) => return Err(err),
                None => return Ok(None),
            }
        }
    }
}
