//! A bound on YAML alias expansion. An alias repeats its anchor's whole subtree, so a
//! few hundred bytes of `*a` can stand for gigabytes once deserialized (a "billion
//! laughs" document). Before a file with anchors is deserialized into the config types,
//! its documents are walked once, without allocating, counting the nodes they expand
//! to; a file whose expansion is far larger than its text is refused.

use std::cell::Cell;
use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};

use crate::diag::{Diagnostic, Diagnostics};

/// Nodes a file may expand to: this many per byte of text, plus a floor.
const NODES_PER_BYTE: u64 = 4;
const NODES_FLOOR: u64 = 100_000;

/// Refuses `text` (read from `file`) when its aliases expand it far beyond its size.
/// A file without anchors cannot expand, and is not walked.
pub fn check_expansion(file: &Path, text: &str, errors: &mut Diagnostics) {
    if !text.contains('&') {
        return;
    }
    let budget = NODES_FLOOR + NODES_PER_BYTE * text.len() as u64;
    let left = Cell::new(budget);
    for document in serde_yaml::Deserializer::from_str(text) {
        if let Err(e) = (Count { left: &left }).deserialize(document) {
            if left.get() == 0 {
                errors.push(Diagnostic::new(
                    file,
                    format!(
                        "YAML aliases expand this file to more than {budget} nodes ({} bytes of text): refused",
                        text.len()
                    ),
                ));
            }
            // Any other error is a syntax error, reported by the real parse.
            let _ = e;
            return;
        }
    }
}

/// Counts every node it visits; fails once the budget is spent.
#[derive(Clone, Copy)]
struct Count<'a> {
    left: &'a Cell<u64>,
}

impl Count<'_> {
    fn tick<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get() {
            0 => Err(E::custom("expansion limit")),
            n => {
                self.left.set(n - 1);
                Ok(())
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! leaf {
    ($($name:ident: $t:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $t) -> Result<(), E> { self.tick() })*
    };
}

impl<'de> Visitor<'de> for Count<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML")
    }

    leaf!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64,
          visit_str: &str, visit_i128: i128, visit_u128: u128);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.tick()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.tick()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.tick()?;
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.tick()?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.tick()?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged value (`!tag x`): count the value.
        let (_, variant) = data.variant_seed(self)?;
        de::VariantAccess::newtype_variant_seed(variant, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        let mut errors = Diagnostics::default();
        check_expansion(Path::new("t.yaml"), text, &mut errors);
        !errors.is_empty()
    }

    #[test]
    fn ordinary_anchors_pass() {
        assert!(!refused(
            "hc: &hc { protocol: http, path: /health }\nroutes:\n  a: { health_check: *hc }\n  b: { health_check: *hc }\n"
        ));
        assert!(!refused("no anchors: [1, 2, 3]\n"));
    }

    #[test]
    fn alias_bomb_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (i, prev) in ["a", "b", "c", "d", "e", "f", "g"].iter().enumerate() {
            let name = (b'b' + i as u8) as char;
            text.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        assert!(refused(&text));
    }

    #[test]
    fn wide_alias_of_a_big_anchor_refused() {
        // One big route aliased many times: the shape that grew a process to 24 GB.
        let mut text = String::from("r: &r\n  instances: [");
        for i in 0..5_000 {
            text.push_str(&format!("\"127.0.0.1:{}\", ", 1000 + i));
        }
        text.push_str("]\nroutes:\n");
        for i in 0..200 {
            text.push_str(&format!("  r{i}: *r\n"));
        }
        assert!(refused(&text));
    }
}
