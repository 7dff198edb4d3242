//! tcpdump-style BPF filters, compiled by libpcap and run on packets read any way.

use pcap::{BpfProgram, Capture, Linktype};

/// A filter expression compiled once per link type it meets.
pub struct PacketFilter {
    expression: String,
    /// `None` where the expression does not compile for that link type: nothing passes,
    /// and the compile is not retried for every packet.
    programs: Vec<(i32, Option<BpfProgram>)>,
}

impl PacketFilter {
    /// Checks the expression now (against Ethernet) so a typo fails before any reading.
    pub fn new(expression: &str) -> Result<PacketFilter, String> {
        let program = compile(expression, 1)?;
        Ok(PacketFilter {
            expression: expression.to_string(),
            programs: vec![(1, Some(program))],
        })
    }

    /// Whether the frame passes.
    pub fn matches(&mut self, linktype: i32, frame: &[u8]) -> bool {
        let index = match self.programs.iter().position(|(lt, _)| *lt == linktype) {
            Some(i) => i,
            None => {
                self.programs
                    .push((linktype, compile(&self.expression, linktype).ok()));
                self.programs.len() - 1
            }
        };
        self.programs[index]
            .1
            .as_ref()
            .is_some_and(|p| p.filter(frame))
    }
}

fn compile(expression: &str, linktype: i32) -> Result<BpfProgram, String> {
    let dead = Capture::dead(Linktype(linktype)).map_err(|e| e.to_string())?;
    dead.compile(expression, true)
        .map_err(|e| format!("invalid filter '{expression}': {e}"))
}
