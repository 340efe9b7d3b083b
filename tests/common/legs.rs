//! weir's two proxy legs, for tests that must hold on both: weir's own HTTP/1 and
//! HTTP/2 path (on by default) and Pingora's proxy (`WEIR_H1_DIRECT=0` sends every
//! request there).

/// Which leg serves the requests of a weir process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    Weir,
    Pingora,
}

impl Leg {
    pub const BOTH: [Leg; 2] = [Leg::Weir, Leg::Pingora];

    /// The environment that puts a weir process on this leg.
    pub fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Leg::Weir => &[],
            Leg::Pingora => &[("WEIR_H1_DIRECT", "0")],
        }
    }
}
