//! A small XML reader over `xmlparser`: a fabric document becomes a tree of
//! [`Element`]s, and [`Node`] walks that tree remembering where it is, so a
//! document parser reads like `gs.req_text("Container/ContainerId")?` and a
//! missing element is reported as
//! `GoalState: /GoalState/Container/ContainerId: missing`.
//!
//! Deliberately small: the WireServer's documents use no DTDs, no custom
//! entities and no namespaces that matter, so
//!
//! * names are matched by their local part (`ns1:UserName` is `UserName`),
//!   case-sensitively, as waagent's `getElementsByTagName` lookups do;
//! * namespace declarations (`xmlns`, `xmlns:i`) are not kept as attributes;
//! * the XML declaration, comments, processing instructions and any DTD are
//!   skipped; entities a DTD declares are *not* expanded (so no "billion
//!   laughs"): only the five predefined entities and character references are;
//! * limits ([`MAX_DEPTH`], [`MAX_ELEMENTS`]) bound the memory an unexpected
//!   document can take. Everything from outside is refused with a
//!   [`DocError`], never a panic.

use std::fmt;

use xmlparser::{ElementEnd, Token, Tokenizer};

/// Deepest element nesting accepted (the root is depth 1). Real documents
/// stay under 10.
pub const MAX_DEPTH: usize = 64;

/// Most elements accepted in one document. The largest real ExtensionsConfig
/// has a few hundred.
pub const MAX_ELEMENTS: usize = 100_000;

/// A document could not be read: which document, where in it (a path of
/// element local names from the root, empty when the problem is the whole
/// text), and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocError {
    pub document: &'static str,
    pub path: String,
    pub message: String,
}

impl DocError {
    pub fn new(
        document: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        DocError {
            document,
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.document, self.message)
        } else {
            write!(f, "{}: {}: {}", self.document, self.path, self.message)
        }
    }
}

impl std::error::Error for DocError {}

/// One element: its local name, attributes (local names, decoded values, in
/// document order), child elements, and all its direct text and CDATA,
/// decoded but not trimmed (runtime settings JSON keeps its layout).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    /// The first child element called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child element called `name`, in document order.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The value of the first attribute called `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A cursor on this element as the root of `document`, for reading with
    /// errors that name the document and the path.
    pub fn node(&self, document: &'static str) -> Node<'_> {
        Node {
            document,
            path: format!("/{}", self.name),
            element: self,
        }
    }
}

/// An element together with the document it belongs to and its path from
/// the root, so every lookup can fail with a precise [`DocError`].
///
/// Relative paths (`rel`) are element names joined by `/`; at each step the
/// first child of that name is taken (waagent's `find`). [`Node::all`] takes
/// every match of the last step and numbers them in the path (`Plugin[2]`,
/// counting from 1 as XPath does).
#[derive(Debug, Clone)]
pub struct Node<'a> {
    document: &'static str,
    path: String,
    element: &'a Element,
}

impl<'a> Node<'a> {
    pub fn element(&self) -> &'a Element {
        self.element
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn document(&self) -> &'static str {
        self.document
    }

    /// An error about this element.
    pub fn error(&self, message: impl Into<String>) -> DocError {
        DocError::new(self.document, self.path.clone(), message)
    }

    /// An error about something at `rel` below this element (which may not exist).
    pub fn error_at(&self, rel: &str, message: impl Into<String>) -> DocError {
        DocError::new(self.document, format!("{}/{}", self.path, rel), message)
    }

    /// The element at `rel`, if there is one.
    pub fn get(&self, rel: &str) -> Option<Node<'a>> {
        let mut element = self.element;
        for step in rel.split('/') {
            element = element.child(step)?;
        }
        Some(Node {
            document: self.document,
            path: format!("{}/{}", self.path, rel),
            element,
        })
    }

    /// The element at `rel`; its absence is an error.
    pub fn req(&self, rel: &str) -> Result<Node<'a>, DocError> {
        self.get(rel).ok_or_else(|| self.error_at(rel, "missing"))
    }

    /// Every element at `rel`: all children named by the last step of the
    /// first element named by the steps before it. Empty when none.
    pub fn all(&self, rel: &str) -> Vec<Node<'a>> {
        let (parent, name) = match rel.rsplit_once('/') {
            Some((parent, name)) => match self.get(parent) {
                Some(p) => (p, name),
                None => return Vec::new(),
            },
            None => (self.clone(), rel),
        };
        parent
            .element
            .children
            .iter()
            .filter(|c| c.name == name)
            .enumerate()
            .map(|(i, element)| Node {
                document: self.document,
                path: format!("{}/{}[{}]", parent.path, name, i + 1),
                element,
            })
            .collect()
    }

    /// This element's own text, trimmed.
    pub fn text(&self) -> &'a str {
        self.element.text.trim()
    }

    /// The trimmed text at `rel`; `None` when the element is absent or its
    /// text is blank (waagent treats both alike).
    pub fn opt_text(&self, rel: &str) -> Option<String> {
        self.get(rel)
            .map(|n| n.text())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    }

    /// The trimmed text at `rel`, which must be present and not blank.
    pub fn req_text(&self, rel: &str) -> Result<String, DocError> {
        let node = self.req(rel)?;
        match node.text() {
            "" => Err(node.error("empty")),
            text => Ok(text.to_string()),
        }
    }

    /// An attribute's value, untrimmed.
    pub fn attr(&self, name: &str) -> Option<&'a str> {
        self.element.attr(name)
    }

    /// An attribute's trimmed value; `None` when absent or blank.
    pub fn opt_attr(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    /// An attribute's trimmed value, which must be present and not blank.
    /// Errors name it XPath-style: `/HostingEnvironmentConfig/Incarnation/@instance`.
    pub fn req_attr(&self, name: &str) -> Result<String, DocError> {
        match self.attr(name).map(str::trim) {
            None => Err(self.error_at(&format!("@{name}"), "missing")),
            Some("") => Err(self.error_at(&format!("@{name}"), "empty")),
            Some(value) => Ok(value.to_string()),
        }
    }
}

/// An element being built, with the prefix its end tag must repeat.
struct Open<'t> {
    element: Element,
    prefix: &'t str,
}

fn path_of(stack: &[Open<'_>]) -> String {
    stack
        .iter()
        .map(|o| format!("/{}", o.element.name))
        .collect()
}

/// Elements whose content is a secret (matched by local name, in any case):
/// an error inside one never shows the content, nor anything after it in
/// the path, since a stray `<` in a password makes the rest of it look like
/// element names.
const SECRET_ELEMENTS: &[&str] = &["UserPassword", "CustomData"];

/// Reads `text` as the XML document `document` (the name errors carry) and
/// returns its root element.
pub fn parse(document: &'static str, text: &str) -> Result<Element, DocError> {
    parse_tokens(document, text).map_err(hide_secret)
}

/// An error whose path goes into a secret element loses what it would have
/// quoted: its message (an unknown entity, the character the tokenizer
/// stumbled on) and the path below that element.
fn hide_secret(mut e: DocError) -> DocError {
    let mut kept = 0;
    for segment in e.path.split('/').skip(1) {
        kept += 1 + segment.len();
        let local = segment.split('[').next().unwrap_or(segment);
        if let Some(name) = SECRET_ELEMENTS
            .iter()
            .find(|s| s.eq_ignore_ascii_case(local))
        {
            e.path.truncate(kept);
            e.message = format!("the content of {name} is not valid XML (not shown: it is secret)");
            break;
        }
    }
    e
}

fn parse_tokens(document: &'static str, text: &str) -> Result<Element, DocError> {
    let mut stack: Vec<Open<'_>> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    let fail =
        |stack: &[Open<'_>], message: String| DocError::new(document, path_of(stack), message);

    for token in Tokenizer::from(text) {
        let token = match token {
            Ok(token) => token,
            // xmlparser itself refuses text, elements or junk after the root.
            Err(e) if root.is_some() => {
                return Err(fail(&stack, format!("content after the root element: {e}")))
            }
            Err(e) => return Err(fail(&stack, format!("malformed XML: {e}"))),
        };
        match token {
            Token::ElementStart { prefix, local, .. } => {
                if root.is_some() {
                    return Err(fail(&stack, "content after the root element".into()));
                }
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(fail(&stack, format!("more than {MAX_ELEMENTS} elements")));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(fail(
                        &stack,
                        format!("nesting deeper than {MAX_DEPTH} elements"),
                    ));
                }
                stack.push(Open {
                    element: Element {
                        name: local.as_str().to_string(),
                        ..Element::default()
                    },
                    prefix: prefix.as_str(),
                });
            }
            Token::Attribute {
                prefix,
                local,
                value,
                ..
            } => {
                let (prefix, local) = (prefix.as_str(), local.as_str());
                if prefix == "xmlns" || (prefix.is_empty() && local == "xmlns") {
                    continue;
                }
                let value = decode(value.as_str()).map_err(|m| fail(&stack, m))?;
                if let Some(open) = stack.last_mut() {
                    open.element.attrs.push((local.to_string(), value));
                }
            }
            Token::ElementEnd { end, .. } => {
                if end == ElementEnd::Open {
                    continue;
                }
                let Some(open) = stack.pop() else {
                    return Err(fail(&stack, "end tag without a start tag".into()));
                };
                if let ElementEnd::Close(prefix, local) = end {
                    if prefix.as_str() != open.prefix || local.as_str() != open.element.name {
                        let path = format!("{}/{}", path_of(&stack), open.element.name);
                        return Err(DocError::new(
                            document,
                            path,
                            format!(
                                "end tag </{}> does not match <{}>",
                                qualified(prefix.as_str(), local.as_str()),
                                qualified(open.prefix, &open.element.name)
                            ),
                        ));
                    }
                }
                match stack.last_mut() {
                    Some(parent) => parent.element.children.push(open.element),
                    None => root = Some(open.element),
                }
            }
            Token::Text { text } => {
                if stack.is_empty() {
                    if text.as_str().trim().is_empty() {
                        continue;
                    }
                    return Err(fail(&stack, "text outside the root element".into()));
                }
                let decoded = decode(text.as_str()).map_err(|m| fail(&stack, m))?;
                if let Some(open) = stack.last_mut() {
                    open.element.text.push_str(&decoded);
                }
            }
            Token::Cdata { text, .. } => {
                if let Some(open) = stack.last_mut() {
                    open.element.text.push_str(text.as_str());
                }
            }
            // Declaration, comments, processing instructions, DTD.
            _ => {}
        }
    }

    if let Some(open) = stack.last() {
        let message = format!(
            "unexpected end of document: <{}> is not closed",
            qualified(open.prefix, &open.element.name)
        );
        return Err(fail(&stack, message));
    }
    root.ok_or_else(|| DocError::new(document, "", "no root element"))
}

fn qualified(prefix: &str, local: &str) -> String {
    if prefix.is_empty() {
        local.to_string()
    } else {
        format!("{prefix}:{local}")
    }
}

/// Replaces the predefined entities and character references in `raw`.
/// Anything else after `&` is refused: the fabric always escapes its URLs,
/// so a bare `&` means the text is not what we think it is.
fn decode(raw: &str) -> Result<String, String> {
    if !raw.contains('&') {
        return Ok(raw.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let len = after
            .find(|c: char| {
                !(c.is_ascii_alphanumeric() || matches!(c, '#' | '_' | '-' | '.' | ':'))
            })
            .unwrap_or(after.len());
        if len == 0 || !after[len..].starts_with(';') {
            return Err("'&' is not the start of an entity reference".to_string());
        }
        let name = &after[..len];
        out.push(match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ if name.starts_with('#') => {
                char_ref(name).ok_or_else(|| format!("invalid character reference &{name};"))?
            }
            _ => return Err(format!("unknown entity &{name};")),
        });
        rest = &after[len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `#NN` or `#xHH` as a character XML allows (`Char` in the XML 1.0 grammar).
fn char_ref(name: &str) -> Option<char> {
    let (digits, radix) = match name.strip_prefix("#x") {
        Some(hex) => (hex, 16),
        None => (name.strip_prefix('#')?, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let c = char::from_u32(u32::from_str_radix(digits, radix).ok()?)?;
    let allowed =
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}');
    allowed.then_some(c)
}

/// `text` escaped for use in XML content or a quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse("Doc", text).unwrap_err().to_string()
    }

    #[test]
    fn builds_the_tree_with_text_and_attributes() {
        let root = parse(
            "Doc",
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<!-- hello -->\n\
             <A x=\"1\" y='two'><B>one</B><B>two</B><C/><?pi stuff?></A>\n",
        )
        .unwrap();
        assert_eq!(root.name, "A");
        assert_eq!(root.attr("x"), Some("1"));
        assert_eq!(root.attr("y"), Some("two"));
        assert_eq!(root.attr("z"), None);
        let bs: Vec<&str> = root.children_named("B").map(|b| b.text.as_str()).collect();
        assert_eq!(bs, ["one", "two"]);
        assert!(root
            .child("C")
            .is_some_and(|c| c.children.is_empty() && c.text.is_empty()));
    }

    #[test]
    fn decodes_entities_in_text_and_attributes() {
        let root = parse(
            "Doc",
            "<A v=\"&lt;m role=&quot;R&quot;&gt; &apos;q&apos;\">a=1&amp;b=%2D2 &#65;&#x42;&#xe9;</A>",
        )
        .unwrap();
        assert_eq!(root.attr("v"), Some("<m role=\"R\"> 'q'"));
        assert_eq!(root.text, "a=1&b=%2D2 ABé");
    }

    #[test]
    fn cdata_is_kept_verbatim_and_text_is_not_trimmed() {
        let root = parse("Doc", "<A>\n  x <![CDATA[<b>&amp;</b>]]> y\n</A>").unwrap();
        assert_eq!(root.text, "\n  x <b>&amp;</b> y\n");
    }

    #[test]
    fn namespace_prefixes_are_dropped_and_declarations_skipped() {
        let root = parse(
            "Doc",
            "<ns1:Env xmlns:ns1=\"urn:a\" xmlns=\"urn:b\" xsi:type=\"t\">\
             <ns1:UserName>azureuser</ns1:UserName></ns1:Env>",
        )
        .unwrap();
        assert_eq!(root.name, "Env");
        assert_eq!(root.attrs, [("type".to_string(), "t".to_string())]);
        assert_eq!(
            root.child("UserName").map(|u| u.text.as_str()),
            Some("azureuser")
        );
    }

    #[test]
    fn dtd_is_skipped_but_its_entities_are_not_expanded() {
        let root = parse("Doc", "<!DOCTYPE A [<!ENTITY e \"x\">]><A>ok</A>").unwrap();
        assert_eq!(root.text, "ok");
        assert_eq!(
            err("<!DOCTYPE A [<!ENTITY e \"x\">]><A>&e;</A>"),
            "Doc: /A: unknown entity &e;"
        );
    }

    #[test]
    fn errors_inside_a_secret_element_show_neither_content_nor_deeper_path() {
        assert_eq!(
            err("<A><B><wa:UserPassword>p&ss;w</wa:UserPassword></B></A>"),
            "Doc: /A/B/UserPassword: the content of UserPassword is not valid XML (not shown: it is secret)"
        );
        // A stray `<` makes the password's tail an element name.
        assert_eq!(
            err("<A><userpassword>pa<ssw</userpassword></A>"),
            "Doc: /A/userpassword: the content of UserPassword is not valid XML (not shown: it is secret)"
        );
        // Elsewhere the entity is named, as before.
        assert_eq!(
            err("<A><UserPasswordHint>&hint;</UserPasswordHint></A>"),
            "Doc: /A/UserPasswordHint: unknown entity &hint;"
        );
    }

    #[test]
    fn refusals_name_the_document_path_and_problem() {
        assert_eq!(
            err("<A><B>&nbsp;</B></A>"),
            "Doc: /A/B: unknown entity &nbsp;"
        );
        assert_eq!(
            err("<A v=\"a & b\"/>"),
            "Doc: /A: '&' is not the start of an entity reference"
        );
        assert_eq!(
            err("<A>&#0;</A>"),
            "Doc: /A: invalid character reference &#0;"
        );
        assert_eq!(
            err("<A>&#xD800;</A>"),
            "Doc: /A: invalid character reference &#xD800;"
        );
        assert_eq!(
            err("<A>&#12a;</A>"),
            "Doc: /A: invalid character reference &#12a;"
        );
        assert_eq!(
            err("<A><B></C></A>"),
            "Doc: /A/B: end tag </C> does not match <B>"
        );
        assert_eq!(
            err("<a:A></b:A>"),
            "Doc: /A: end tag </b:A> does not match <a:A>"
        );
        assert_eq!(err(""), "Doc: no root element");
        assert_eq!(
            err("<?xml version=\"1.0\"?>\n<!-- c -->\n"),
            "Doc: no root element"
        );
        assert_eq!(
            err("<A><B>"),
            "Doc: /A/B: unexpected end of document: <B> is not closed"
        );
        assert!(err("<A/>text").starts_with("Doc: content after the root element: "));
        assert!(err("<A/><B/>").starts_with("Doc: content after the root element: "));
        assert!(err("text<A/>").starts_with("Doc: malformed XML: "));
        assert!(err("<A x=1/>").starts_with("Doc: /A: malformed XML: "));
        assert!(err("<A").starts_with("Doc: /A: "));
    }

    #[test]
    fn nesting_is_limited_to_64() {
        let nest = |n: usize| "<E>".repeat(n) + &"</E>".repeat(n);
        assert!(parse("Doc", &nest(MAX_DEPTH)).is_ok());
        let e = parse("Doc", &nest(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(e.message, "nesting deeper than 64 elements");
        assert_eq!(e.path, "/E".repeat(MAX_DEPTH));
    }

    #[test]
    fn element_count_is_limited() {
        let body = "<E/>".repeat(MAX_ELEMENTS - 1);
        assert!(parse("Doc", &format!("<A>{body}</A>")).is_ok());
        assert_eq!(
            err(&format!("<A>{body}<E/></A>")),
            "Doc: /A: more than 100000 elements"
        );
    }

    #[test]
    fn node_lookups_report_paths() {
        let root = parse(
            "GoalState",
            "<GoalState><Incarnation> 3 </Incarnation><Empty>  </Empty>\
             <L><I n=\"a\"/><I n=\" \"/><J/></L></GoalState>",
        )
        .unwrap();
        let gs = root.node("GoalState");
        assert_eq!(gs.req_text("Incarnation").unwrap(), "3");
        assert_eq!(
            gs.req_text("Container/ContainerId")
                .unwrap_err()
                .to_string(),
            "GoalState: /GoalState/Container/ContainerId: missing"
        );
        assert_eq!(
            gs.req_text("Empty").unwrap_err().to_string(),
            "GoalState: /GoalState/Empty: empty"
        );
        assert_eq!(gs.opt_text("Empty"), None);
        assert_eq!(gs.opt_text("Nothing"), None);
        let items = gs.all("L/I");
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].path(), "/GoalState/L/I[2]");
        assert_eq!(items[0].req_attr("n").unwrap(), "a");
        assert_eq!(
            items[1].req_attr("n").unwrap_err().to_string(),
            "GoalState: /GoalState/L/I[2]/@n: empty"
        );
        assert_eq!(
            items[1].req_attr("m").unwrap_err().to_string(),
            "GoalState: /GoalState/L/I[2]/@m: missing"
        );
        assert!(gs.all("Nothing/I").is_empty());
        assert_eq!(gs.all("L").len(), 1);
    }

    #[test]
    fn escape_covers_the_five_special_characters() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
        let text = "x < y & \"z\"";
        let root = parse("Doc", &format!("<A v=\"{0}\">{0}</A>", escape(text))).unwrap();
        assert_eq!((root.attr("v"), root.text.as_str()), (Some(text), text));
    }
}
