//! Agent ID path templates (`agent_path_template`), in SPIRE's notation: text with
//! `{{ .Field }}` placeholders, such as `/{{ .PluginName }}/{{ .AccountID }}`. Each
//! attestor names the fields it offers; a template naming any other field is refused
//! at start-up. The rendered path must start with the attestor's name, so agents of
//! two attestors can never share an ID, and every segment must be a valid SPIFFE path
//! segment: a value that would add a segment or climb out of one (`/`, `..`) is
//! refused, not passed on.

use super::AttestError;

/// Longest agent path accepted (a SPIFFE ID is at most 2048 bytes in all).
const MAX_PATH: usize = 1800;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    parts: Vec<Part>,
}

impl PathTemplate {
    /// Parses `text`, allowing the fields in `fields`; a field ending in `.` allows
    /// any key under it (`URISanSelectors.` allows `{{ .URISanSelectors.rack }}`).
    /// `setting` names the setting in errors.
    pub fn parse(setting: &str, text: &str, fields: &[&str]) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("{setting}: a \"{{{{\" is not closed in {text:?}"))?;
            let inner = after[..end].trim();
            let field = inner.strip_prefix('.').ok_or_else(|| {
                format!("{setting}: {{{{ {inner} }}}} is not a field (write {{{{ .Name }}}})")
            })?;
            let known = fields.iter().any(|f| match f.strip_suffix('.') {
                Some(prefix) => field
                    .strip_prefix(prefix)
                    .and_then(|k| k.strip_prefix('.'))
                    .is_some_and(|k| !k.is_empty()),
                None => *f == field,
            });
            if !known {
                return Err(format!(
                    "{setting}: unknown field .{field} (known: {})",
                    fields
                        .iter()
                        .map(|f| format!(".{f}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            parts.push(Part::Field(field.to_owned()));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("{setting}: a \"}}}}\" has no opening in {text:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Renders the agent path (after `/spire/agent/`) for the attestor `name`;
    /// `value` gives each field's value, `None` when this node has none.
    pub fn render(
        &self,
        name: &str,
        value: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, AttestError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => match value(f) {
                    Some(v) if !v.is_empty() => out.push_str(&v),
                    _ => {
                        return Err(AttestError::Refused(format!(
                            "{name}: agent_path_template uses .{f}, which this node does not have"
                        )));
                    }
                },
            }
        }
        let path = out.strip_prefix('/').unwrap_or(&out).to_owned();
        let refuse = |why: String| {
            Err(AttestError::Refused(format!(
                "{name}: the agent path {path:?} from agent_path_template {why}"
            )))
        };
        if path.len() > MAX_PATH {
            return refuse(format!("is longer than {MAX_PATH} bytes"));
        }
        if path.split('/').next() != Some(name) {
            return refuse(format!("must start with \"{name}/\""));
        }
        for seg in path.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return refuse("has an empty, \".\" or \"..\" segment".to_owned());
            }
            if let Some(c) = seg
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
            {
                return refuse(format!(
                    "has the character {c:?}, which SPIFFE IDs do not allow (letters, digits, '.', '-', '_')"
                ));
            }
        }
        if !path.contains('/') {
            return refuse("names no node after the attestor".into());
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[&str] = &["PluginName", "AccountID", "InstanceID", "URISanSelectors."];

    fn values(f: &str) -> Option<String> {
        match f {
            "PluginName" => Some("aws_iid".into()),
            "AccountID" => Some("123456789012".into()),
            "InstanceID" => Some("i-0abc".into()),
            "URISanSelectors.rack" => Some("r7".into()),
            "URISanSelectors.evil" => Some("../../spire/server".into()),
            "URISanSelectors.space" => Some("a b".into()),
            _ => None,
        }
    }

    #[test]
    fn renders_fields_between_text() {
        let t = PathTemplate::parse(
            "s",
            "/{{ .PluginName }}/{{.AccountID}}/id-{{ .InstanceID }}/{{ .URISanSelectors.rack }}",
            FIELDS,
        )
        .unwrap();
        assert_eq!(
            t.render("aws_iid", &values).unwrap(),
            "aws_iid/123456789012/id-i-0abc/r7"
        );
    }

    #[test]
    fn unknown_fields_and_broken_braces_are_start_up_errors() {
        for (text, want) in [
            ("/{{ .Nope }}", "unknown field .Nope"),
            ("/{{ .PluginName }", "not closed"),
            ("/{{ PluginName }}", "is not a field"),
            ("/x}}", "has no opening"),
            ("/{{ .URISanSelectors. }}", "unknown field"),
        ] {
            let e = PathTemplate::parse("node_attestors.aws_iid.agent_path_template", text, FIELDS)
                .unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(
                e.starts_with("node_attestors.aws_iid.agent_path_template"),
                "{e}"
            );
        }
    }

    #[test]
    fn rendered_paths_stay_in_the_attestors_namespace() {
        let refused = |text: &str| {
            let t = PathTemplate::parse("s", text, FIELDS).unwrap();
            t.render("aws_iid", &values).unwrap_err().to_string()
        };
        assert!(refused("/x509pop/{{ .InstanceID }}").contains("must start with"));
        assert!(refused("/{{ .PluginName }}/{{ .URISanSelectors.evil }}").contains("\"..\""));
        assert!(refused("/{{ .PluginName }}/{{ .URISanSelectors.space }}").contains("' '"));
        assert!(refused("/{{ .PluginName }}//x").contains("empty"));
        assert!(refused("/{{ .PluginName }}").contains("names no node"));
        assert!(
            refused("/{{ .PluginName }}/{{ .URISanSelectors.other }}")
                .contains("uses .URISanSelectors.other, which this node does not have")
        );
    }
}
