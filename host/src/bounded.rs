//! Quoting input in messages without echoing all of it.
//!
//! Errors name what they refuse (a path, a plugin, a contract), and that input may be hostile:
//! a 10 MB "path" must not come back as a 10 MB error, nor be kept in a status until the next
//! deploy. [`Bounded`] displays at most [`MAX_QUOTE`] bytes of a string, cut at a character
//! boundary, and says how much it left out; [`truncate`] does the same to a whole message.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

/// The most bytes of one input an error message quotes.
pub const MAX_QUOTE: usize = 256;

/// The most bytes of a whole error message kept (in a status, in a response).
pub const MAX_MESSAGE: usize = 2048;

/// Displays a string, or its first [`MAX_QUOTE`] bytes and how many more there were.
#[derive(Debug, Clone, Copy)]
pub struct Bounded<'a>(pub &'a str);

impl fmt::Display for Bounded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&truncate(self.0, MAX_QUOTE))
    }
}

/// Displays a path, bounded like [`Bounded`].
#[derive(Debug, Clone, Copy)]
pub struct BoundedPath<'a>(pub &'a Path);

impl fmt::Display for BoundedPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Bounded(&self.0.to_string_lossy()).fmt(f)
    }
}

/// `text`, or its first `max` bytes (cut at a character boundary) followed by `…(N more bytes)`.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!(
        "{}…({} more bytes)",
        &text[..cut],
        text.len() - cut
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_cut_at_a_character_boundary_and_says_how_much_is_missing() {
        assert_eq!(Bounded("short").to_string(), "short");
        let long = "é".repeat(1000); // 2,000 bytes
        let shown = Bounded(&long).to_string();
        assert!(shown.len() < MAX_QUOTE + 32, "{} bytes", shown.len());
        assert!(shown.ends_with("…(1744 more bytes)"), "{shown}");
        assert_eq!(truncate(&long, 3), "é…(1998 more bytes)");
    }
}
