//! tcpdump-style BPF filters, compiled by libpcap and run on packets read any way.

use pcap::{BpfProgram, Capture, Linktype};

/// A filter expression compiled once per link type it meets.
pub struct PacketFilter {
    expression: String,
    programs: Vec<(i32, BpfProgram)>,
}

impl PacketFilter {
    /// Checks the expression now (against Ethernet) so a typo fails before any reading.
    pub fn new(expression: &str) -> Result<PacketFilter, String> {
        let mut f = PacketFilter {
            expression: expression.to_string(),
            programs: Vec::new(),
        };
        f.program_for(1)?;
        Ok(f)
    }

    fn program_for(&mut self, linktype: i32) -> Result<&BpfProgram, String> {
        if let Some(i) = self.programs.iter().position(|(lt, _)| *lt == linktype) {
            return Ok(&self.programs[i].1);
        }
        let dead = Capture::dead(Linktype(linktype)).map_err(|e| e.to_string())?;
        let program = dead
            .compile(&self.expression, true)
            .map_err(|e| format!("invalid filter '{}': {e}", self.expression))?;
        self.programs.push((linktype, program));
        let last = self.programs.len() - 1;
        Ok(&self.programs[last].1)
    }

    /// Whether the frame passes. A filter that cannot be compiled for this link type
    /// passes nothing.
    pub fn matches(&mut self, linktype: i32, frame: &[u8]) -> bool {
        match self.program_for(linktype) {
            Ok(p) => p.filter(frame),
            Err(_) => false,
        }
    }
}
