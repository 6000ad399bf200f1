//! Building HTML that is safe by construction: every string from the
//! fleet (container names, labels, executables: attacker-chosen) goes in
//! through [`Page::text`] or a [`Cell`], which escape it; links are
//! [`Href`]s, whose segments are percent-encoded, so nothing from the
//! fleet can open a tag, close an attribute or change a URL's scheme.

/// Escape text for an HTML element body or a double- or single-quoted
/// attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // control characters other than tab and newline say nothing
            // to a reader and may confuse a terminal copy
            c if c.is_control() && c != '\t' && c != '\n' => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// Percent-encode one path segment: only unreserved characters stay.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // "." and ".." would be resolved away by the browser
    if out == "." || out == ".." {
        return out.replace('.', "%2E");
    }
    out
}

/// A link target on this site: `/` followed by percent-encoded segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Href(String);

impl Href {
    pub fn new(segments: &[&str]) -> Href {
        let mut s = String::new();
        for seg in segments {
            s.push('/');
            s.push_str(&segment(seg));
        }
        if s.is_empty() {
            s.push('/');
        }
        Href(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `/nodes/NODE`.
pub fn node(node: &str) -> Href {
    Href::new(&["nodes", node])
}

/// `/nodes/NODE/containers/ID`.
pub fn container(node: &str, id: &str) -> Href {
    Href::new(&["nodes", node, "containers", id])
}

/// `/namespaces/NS`.
pub fn namespace(ns: &str) -> Href {
    Href::new(&["namespaces", ns])
}

/// `/images/DIGEST`.
pub fn image(digest: &str) -> Href {
    Href::new(&["images", digest])
}

/// One table cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    Text(String),
    Link(Href, String),
    /// yes / no / - (unknown), with a class for the eye.
    Flag(Option<bool>),
    /// A flag that is bad when true (shown in red).
    Risk(Option<bool>),
    Num(i64),
    /// Several links in one cell (a container and its namespace).
    Links(Vec<(Href, String)>),
}

/// An HTML document being written.
#[derive(Default)]
pub struct Page {
    out: String,
}

impl Page {
    /// A document with its head; `title` is escaped.
    pub fn new(title: &str) -> Page {
        let mut p = Page::default();
        p.raw("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
        p.raw("<meta name=\"viewport\" content=\"width=device-width\">");
        p.raw("<link rel=\"stylesheet\" href=\"/style.css\"><title>");
        p.text(title);
        p.raw(" - Spyglass</title></head><body>\n<nav><a href=\"/\">Spyglass fleet</a></nav>\n<main>\n");
        p
    }

    /// Markup written by this program (never data).
    pub fn raw(&mut self, markup: &'static str) {
        self.out.push_str(markup);
    }

    /// Data, escaped.
    pub fn text(&mut self, s: &str) {
        self.out.push_str(&escape(s));
    }

    pub fn link(&mut self, href: &Href, text: &str) {
        self.out.push_str("<a href=\"");
        self.out.push_str(href.as_str());
        self.out.push_str("\">");
        self.text(if text.is_empty() { "-" } else { text });
        self.out.push_str("</a>");
    }

    /// `<h2 id=ID>TITLE</h2>`; `id` is markup (a constant).
    pub fn heading(&mut self, id: &'static str, title: &str) {
        self.out.push_str("<h2 id=\"");
        self.out.push_str(id);
        self.out.push_str("\">");
        self.text(title);
        self.out.push_str("</h2>\n");
    }

    fn cell(&mut self, c: &Cell) {
        match c {
            Cell::Text(s) if s.is_empty() => self.raw("<td>-</td>"),
            Cell::Text(s) => {
                self.raw("<td>");
                self.text(s);
                self.raw("</td>");
            }
            Cell::Link(h, s) => {
                self.raw("<td>");
                self.link(h, s);
                self.raw("</td>");
            }
            Cell::Links(links) => {
                self.raw("<td>");
                for (i, (h, s)) in links.iter().enumerate() {
                    if i > 0 {
                        self.raw(" ");
                    }
                    self.link(h, s);
                }
                self.raw("</td>");
            }
            Cell::Flag(f) | Cell::Risk(f) => {
                let bad = matches!(c, Cell::Risk(Some(true)));
                self.raw(if bad { "<td class=\"bad\">" } else { "<td>" });
                self.raw(match f {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "-",
                });
                self.raw("</td>");
            }
            Cell::Num(n) => self.out.push_str(&format!("<td class=\"num\">{n}</td>")),
        }
    }

    /// A table; `id` names it for tests and anchors. With no rows, a
    /// line saying so; with `more`, a line saying the list is cut.
    pub fn table(
        &mut self,
        id: &'static str,
        head: &[&'static str],
        rows: &[Vec<Cell>],
        more: bool,
    ) {
        if rows.is_empty() {
            self.out
                .push_str(&format!("<p class=\"none\" id=\"{id}\">none</p>\n"));
            return;
        }
        self.out
            .push_str(&format!("<table id=\"{id}\"><thead><tr>"));
        for h in head {
            self.raw("<th>");
            self.raw(h);
            self.raw("</th>");
        }
        self.raw("</tr></thead><tbody>\n");
        for row in rows {
            self.raw("<tr>");
            for c in row {
                self.cell(c);
            }
            self.raw("</tr>\n");
        }
        self.raw("</tbody></table>\n");
        if more {
            self.out.push_str(&format!(
                "<p class=\"more\">First {} rows shown; the CLI (--limit) and the API (limit=N) give up to 10,000, with filters to narrow them.</p>\n",
                rows.len()
            ));
        }
    }

    /// Label/value pairs (a definition list).
    pub fn facts(&mut self, pairs: &[(&'static str, Cell)]) {
        self.raw("<table class=\"facts\"><tbody>\n");
        for (k, v) in pairs {
            self.raw("<tr><th>");
            self.raw(k);
            self.raw("</th>");
            self.cell(v);
            self.raw("</tr>\n");
        }
        self.raw("</tbody></table>\n");
    }

    /// The finished document.
    pub fn finish(mut self) -> String {
        self.raw("</main></body></html>\n");
        self.out
    }
}

/// `2026-12-07T03:40:01.123456789Z` -> `2026-12-07 03:40:01Z` (anything
/// else unchanged).
pub fn short_time(t: &str) -> String {
    match (t.get(..10), t.get(11..19)) {
        (Some(d), Some(h)) if t.len() >= 20 && t.as_bytes()[10] == b'T' => format!("{d} {h}Z"),
        _ => t.to_owned(),
    }
}

/// The page's stylesheet (served as /style.css: the page has no inline
/// style or script, so its Content-Security-Policy allows 'self' only).
pub const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9;font-size:14px}
nav{background:#1b2a3a;padding:8px 16px}nav a{color:#fff;font-weight:600;text-decoration:none}
main{padding:8px 16px}h1{font-size:20px;margin:8px 0}h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;background:#fff;margin-bottom:6px}
th,td{border:1px solid #d7dbe0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.num{text-align:right}td.bad{color:#b00020;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
.card{background:#fff;border:1px solid #d7dbe0;border-radius:6px;padding:6px 12px;min-width:110px}
.card b{display:block;font-size:20px}.card.bad b{color:#b00020}
.stale{background:#fff3cd;border:1px solid #e0c36b;padding:6px 10px}
p.none,p.more{color:#5b6570;margin:4px 0}code{font-size:12px}
table.facts th{width:170px}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_cannot_open_a_tag_or_leave_an_attribute() {
        assert_eq!(
            escape("<script>alert(\"x\")</script>&'"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        assert_eq!(escape("a\u{1b}[31mb"), "a\\u{1b}[31mb");
    }

    #[test]
    fn links_encode_every_segment() {
        assert_eq!(
            container("node-1", "\"><script>x</script>").as_str(),
            "/nodes/node-1/containers/%22%3E%3Cscript%3Ex%3C%2Fscript%3E"
        );
        assert_eq!(image("sha256:ab").as_str(), "/images/sha256%3Aab");
        assert_eq!(namespace("..").as_str(), "/namespaces/%2E%2E");
        assert_eq!(node("a/b c").as_str(), "/nodes/a%2Fb%20c");
        assert_eq!(Href::new(&[]).as_str(), "/");
        assert_eq!(node("é").as_str(), "/nodes/%C3%A9");
    }

    #[test]
    fn tables_escape_cells_and_say_none() {
        let mut p = Page::default();
        p.table(
            "t",
            &["Name", "Root"],
            &[vec![
                Cell::Link(node("<n>"), "<n>".into()),
                Cell::Risk(Some(true)),
            ]],
            true,
        );
        p.table("empty", &["Name"], &[], false);
        let out = p.out;
        assert!(
            out.contains("<td><a href=\"/nodes/%3Cn%3E\">&lt;n&gt;</a></td>"),
            "{out}"
        );
        assert!(out.contains("<td class=\"bad\">yes</td>"), "{out}");
        assert!(out.contains("First 1 rows shown"), "{out}");
        assert!(
            out.contains("<p class=\"none\" id=\"empty\">none</p>"),
            "{out}"
        );
    }

    #[test]
    fn times_are_shortened_to_seconds() {
        assert_eq!(
            short_time("2026-12-07T03:40:01.123456789Z"),
            "2026-12-07 03:40:01Z"
        );
        assert_eq!(short_time("2026-12-07T03:40:01Z"), "2026-12-07 03:40:01Z");
        assert_eq!(short_time("soon"), "soon");
        assert_eq!(short_time(""), "");
    }
}
