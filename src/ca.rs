//! The verification certificate of CA registration: the console asks for a certificate whose
//! subject CN is the instance's registration code (GetRegisterCode), signed by the CA's key.
//! It is built here (rcgen), so registering a CA needs no openssl incantations.

use rcgen::{CertificateParams, DistinguishedName, DnType, Issuer, KeyPair, PublicKeyData};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(
        "the CA key is not a PEM private key this tool can sign with (PKCS#8 ECDSA P-256/P-384, Ed25519 or RSA): {0}"
    )]
    Key(rcgen::Error),
    #[error("the CA certificate is not a PEM X.509 certificate: {0}")]
    Certificate(rcgen::Error),
    #[error("cannot sign the verification certificate: {0}")]
    Sign(rcgen::Error),
    #[error(
        "the CA key is not the key of the CA certificate (their public keys differ): the console would reject the verification certificate; give the key the CA certificate was made with"
    )]
    KeyMismatch,
}

/// Whether `key` is the private key of the certificate's public key.
fn key_matches(ca_cert_pem: &str, key: &KeyPair) -> Result<bool, CaError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_cert_pem.as_bytes())
        .map_err(|_| CaError::Certificate(rcgen::Error::CouldNotParseCertificate))?;
    let cert = pem
        .parse_x509()
        .map_err(|_| CaError::Certificate(rcgen::Error::CouldNotParseCertificate))?;
    Ok(cert.public_key().subject_public_key.data.as_ref() == key.der_bytes())
}

/// Checks that the CA files can sign, before a call is spent.
pub fn check_ca(ca_cert_pem: &str, ca_key_pem: &str) -> Result<(), CaError> {
    let key = KeyPair::from_pem(ca_key_pem).map_err(CaError::Key)?;
    if !key_matches(ca_cert_pem, &key)? {
        return Err(CaError::KeyMismatch);
    }
    Issuer::from_ca_cert_pem(ca_cert_pem, key).map_err(CaError::Certificate)?;
    Ok(())
}

/// A certificate with CN = `register_code`, its own new key, signed by the CA. Returns its PEM.
pub fn verification_certificate(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    register_code: &str,
) -> Result<String, CaError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(CaError::Key)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(CaError::Certificate)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, register_code);
    params.distinguished_name = name;
    let key = KeyPair::generate().map_err(CaError::Sign)?;
    let cert = params.signed_by(&key, &issuer).map_err(CaError::Sign)?;
    Ok(cert.pem())
}
