//! The `cert list` file: one CSV row per device certificate of the instance, as the listing
//! pages arrive. It holds no secret (a certificate's content is public), but it is created 0600
//! like every file this tool writes.

use std::io::Write;

use super::formula::inert;
use crate::api::actions::DeviceCertificate;

pub struct CertificateCsv<W: Write> {
    writer: csv::Writer<W>,
    written: u64,
}

impl<W: Write> CertificateCsv<W> {
    pub fn new(out: W) -> csv::Result<Self> {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record([
            "device_sn",
            "ca_sn",
            "device_name",
            "status",
            "valid_begin",
            "valid_end",
        ])?;
        Ok(CertificateCsv { writer, written: 0 })
    }

    pub fn write(&mut self, c: &DeviceCertificate) -> csv::Result<()> {
        let status = if c.status == "1" {
            "active"
        } else {
            "inactive"
        };
        // A file for people: the name (free text from whoever made the certificate) and the
        // dates are made inert for spreadsheets; the serial numbers, hexadecimal, never begin
        // with a formula character and stay as they are, so the file still feeds `cert`.
        self.writer.write_record([
            c.device_sn.as_str(),
            &c.ca_sn,
            &inert(&c.device_name),
            status,
            &inert(&c.valid_begin),
            &inert(&c.valid_end),
        ])?;
        self.written += 1;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}
