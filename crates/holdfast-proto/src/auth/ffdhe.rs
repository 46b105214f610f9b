//! The finite-field Diffie-Hellman groups of DH-HMAC-CHAP (NVMe Base 2.0 §8.13.5.1, Figure 573: DH group
//! identifiers 01h-05h are RFC 7919's ffdhe2048 ... ffdhe8192, generator 2), and the augmented challenge they
//! feed (§8.13.5.2 / §8.13.5.4: Ca = HMAC(H(g^xy mod p), C)).
//!
//! Sans I/O and deterministic: the caller passes the private exponent in (from the OS's random number
//! generator, [`PRIVATE_LEN`] bytes). The exponentiation is crypto-bigint's Montgomery ladder, constant time in
//! the exponent. Values on the wire are big-endian, exactly the group's length (leading zeros kept), as the
//! Linux implementation writes them (`crypto/dh.c` through `mpi_write_to_sgl`).
//!
//! The primes below were checked when written against their definition in RFC 7919 (p = 2^b - 2^(b-64) +
//! ([2^(b-130) e] + X) * 2^64 - 1, with the RFC's X), as safe primes (Miller-Rabin on p and (p-1)/2), and
//! against OpenSSL's built-in groups; the tests check their shape.

use super::{hmac, HashId};
use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use std::sync::OnceLock;

/// Length of the private exponent the callers draw (512 bits): RFC 7919 §5.2 asks for at least 225 bits with
/// ffdhe2048 up to 400 with ffdhe8192 (twice each group's security strength), and the exponent stays far
/// below q = (p - 1) / 2 in every group.
pub const PRIVATE_LEN: usize = 64;

/// One FFDHE group.
pub struct Group {
    /// The DH group identifier (DHGID).
    pub id: u8,
    /// Its name, as nvmet's configfs `dhchap_dhgroup` takes it.
    pub name: &'static str,
    /// Length of p, and of every value on the wire, in bytes.
    pub len: usize,
    prime_hex: &'static str,
    params: OnceLock<BoxedMontyParams>,
}

/// Why a peer's DH value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhError {
    /// Empty, or longer than the group's length.
    #[error("the DH value is {got} bytes; this group's are at most {max}")]
    Length {
        /// Its length.
        got: usize,
        /// The group's.
        max: usize,
    },
    /// Not in 2 ..= p - 2 (0, 1 and p - 1 are the small subgroup of a safe prime, and p or more is no value).
    #[error("the DH value is out of range (not in 2 ..= p - 2)")]
    Range,
}

impl Group {
    const fn new(id: u8, name: &'static str, bits: usize, prime_hex: &'static str) -> Group {
        Group { id, name, len: bits / 8, prime_hex, params: OnceLock::new() }
    }

    fn bits(&self) -> u32 {
        (self.len * 8) as u32
    }

    /// p, decoded once.
    fn params(&self) -> &BoxedMontyParams {
        self.params.get_or_init(|| {
            let bytes: Vec<u8> = (0..self.prime_hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&self.prime_hex[i..i + 2], 16).expect("a prime is hexadecimal"))
                .collect();
            let p = BoxedUint::from_be_slice(&bytes, self.bits()).expect("a prime fits its group's size");
            BoxedMontyParams::new(Odd::new(p).expect("a prime is odd"))
        })
    }

    fn uint(&self, be: &[u8]) -> BoxedUint {
        let mut padded = vec![0u8; self.len];
        padded[self.len - be.len()..].copy_from_slice(be);
        BoxedUint::from_be_slice(&padded, self.bits()).expect("padded to the group's size")
    }

    fn pow(&self, base: BoxedUint, private: &[u8]) -> Vec<u8> {
        let bits = (private.len() * 8) as u32;
        let e = BoxedUint::from_be_slice(private, bits.max(64)).expect("an exponent fits its own size");
        let r = BoxedMontyForm::new(base, self.params()).pow_bounded_exp(&e, bits.max(64)).retrieve();
        r.to_be_bytes().to_vec()
    }

    /// Our public value g^x mod p for the private exponent `private` (big-endian, [`PRIVATE_LEN`] bytes from
    /// a random source): [`Group::len`] bytes.
    pub fn public_value(&self, private: &[u8]) -> Vec<u8> {
        self.pow(self.uint(&[2]), private)
    }

    /// The shared secret (g^y)^x mod p from the peer's public value `peer` (big-endian, at most
    /// [`Group::len`] bytes) and our private exponent: [`Group::len`] bytes. The peer's value must be in
    /// 2 ..= p - 2 (SP 800-56A rev. 3 §5.6.2.3.1's range check; with a safe prime, the only small subgroup is
    /// {1, p - 1}, so that check is the whole one).
    pub fn shared_secret(&self, private: &[u8], peer: &[u8]) -> Result<Vec<u8>, DhError> {
        if peer.is_empty() || peer.len() > self.len {
            return Err(DhError::Length { got: peer.len(), max: self.len });
        }
        let y = self.uint(peer);
        let p = self.params().modulus().as_ref();
        let two = self.uint(&[2]);
        let p_minus_two = p.wrapping_sub(&two);
        // Public values: the comparison need not be constant time.
        if y.cmp_vartime(&two).is_lt() || y.cmp_vartime(&p_minus_two).is_gt() {
            return Err(DhError::Range);
        }
        Ok(self.pow(y, private))
    }
}

/// The group with identifier `id` (01h-05h), if it is an FFDHE group.
pub fn group(id: u8) -> Option<&'static Group> {
    GROUPS.iter().find(|g| g.id == id)
}

/// The group named `name` (`ffdhe2048` ...), as nvmet's configfs and nvme-cli spell them.
pub fn group_by_name(name: &str) -> Option<&'static Group> {
    GROUPS.iter().find(|g| g.name == name)
}

/// Every FFDHE group, weakest first.
pub static GROUPS: [Group; 5] = [
    Group::new(0x01, "ffdhe2048", 2048, P2048),
    Group::new(0x02, "ffdhe3072", 3072, P3072),
    Group::new(0x03, "ffdhe4096", 4096, P4096),
    Group::new(0x04, "ffdhe6144", 6144, P6144),
    Group::new(0x05, "ffdhe8192", 8192, P8192),
];

/// The augmented challenge Ca = HMAC(H(Z), C) (NVMe Base 2.0 §8.13.5.2 and §8.13.5.4): `shared` is the
/// shared secret Z = g^xy mod p as [`Group::shared_secret`] gives it, H and the HMAC are the exchange's hash.
/// With a DH group, each response is computed over the augmented challenge instead of the challenge itself
/// (C1 for the host's response R1, C2 for the controller's R2).
pub fn augmented_challenge(hash: HashId, shared: &[u8], challenge: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let hashed: Vec<u8> = match hash {
        HashId::Sha256 => sha2::Sha256::digest(shared).to_vec(),
        HashId::Sha384 => sha2::Sha384::digest(shared).to_vec(),
        HashId::Sha512 => sha2::Sha512::digest(shared).to_vec(),
    };
    hmac(hash, &hashed, &[challenge])
}

/// The challenge a response is computed over (NVMe Base 2.0 §8.13.5.2, §8.13.5.4): `challenge` itself with the
/// NULL DH group (`shared` None), else the augmented challenge HMAC(H(Z), C) over the shared secret Z.
pub fn response_challenge(hash: HashId, shared: Option<&[u8]>, challenge: &[u8]) -> Vec<u8> {
    match shared {
        None => challenge.to_vec(),
        Some(z) => augmented_challenge(hash, z, challenge),
    }
}

/// ffdhe2048's prime p (RFC 7919 Appendix A), 2048 bits, big-endian hexadecimal.
const P2048: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695A9E13641146433FBCC939DCE249B3EF9",
    "7D2FE363630C75D8F681B202AEC4617AD3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797ABC0AB182B324FB61D108A94BB2C8E3FB",
    "B96ADAB760D7F4681D4F42A3DE394DF4AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005C58EF1837D1683B2C6F34A26C1B2EFFA",
    "886B423861285C97FFFFFFFFFFFFFFFF",
);

/// ffdhe3072's prime p (RFC 7919 Appendix A), 3072 bits, big-endian hexadecimal.
const P3072: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695A9E13641146433FBCC939DCE249B3EF9",
    "7D2FE363630C75D8F681B202AEC4617AD3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797ABC0AB182B324FB61D108A94BB2C8E3FB",
    "B96ADAB760D7F4681D4F42A3DE394DF4AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005C58EF1837D1683B2C6F34A26C1B2EFFA",
    "886B4238611FCFDCDE355B3B6519035BBC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C",
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF5CAE82AB9C9DF69EE86D2BC522363A0D",
    "ABC521979B0DEADA1DBF9A42D5C4484E0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B66C62E37FFFFFFFFFFFFFFFF",
);

/// ffdhe4096's prime p (RFC 7919 Appendix A), 4096 bits, big-endian hexadecimal.
const P4096: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695A9E13641146433FBCC939DCE249B3EF9",
    "7D2FE363630C75D8F681B202AEC4617AD3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797ABC0AB182B324FB61D108A94BB2C8E3FB",
    "B96ADAB760D7F4681D4F42A3DE394DF4AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005C58EF1837D1683B2C6F34A26C1B2EFFA",
    "886B4238611FCFDCDE355B3B6519035BBC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C",
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF5CAE82AB9C9DF69EE86D2BC522363A0D",
    "ABC521979B0DEADA1DBF9A42D5C4484E0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB",
    "7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A7135C886EFB4318AED6A1E012D9E6832",
    "A907600A918130C46DC778F971AD0038092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF",
    "8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E655F6AFFFFFFFFFFFFFFFF",
);

/// ffdhe6144's prime p (RFC 7919 Appendix A), 6144 bits, big-endian hexadecimal.
const P6144: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695A9E13641146433FBCC939DCE249B3EF9",
    "7D2FE363630C75D8F681B202AEC4617AD3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797ABC0AB182B324FB61D108A94BB2C8E3FB",
    "B96ADAB760D7F4681D4F42A3DE394DF4AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005C58EF1837D1683B2C6F34A26C1B2EFFA",
    "886B4238611FCFDCDE355B3B6519035BBC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C",
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF5CAE82AB9C9DF69EE86D2BC522363A0D",
    "ABC521979B0DEADA1DBF9A42D5C4484E0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB",
    "7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A7135C886EFB4318AED6A1E012D9E6832",
    "A907600A918130C46DC778F971AD0038092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF",
    "8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E0DD9020BFD64B645036C7A4E677D2C38532A3A23BA4442CAF53EA6",
    "3BB454329B7624C8917BDD64B1C0FD4CB38E8C334C701C3ACDAD0657FCCFEC719B1F5C3E4E46041F388147FB4CFDB477",
    "A52471F7A9A96910B855322EDB6340D8A00EF092350511E30ABEC1FFF9E3A26E7FB29F8C183023C3587E38DA0077D9B4",
    "763E4E4B94B2BBC194C6651E77CAF992EEAAC0232A281BF6B3A739C1226116820AE8DB5847A67CBEF9C9091B462D538C",
    "D72B03746AE77F5E62292C311562A846505DC82DB854338AE49F5235C95B91178CCF2DD5CACEF403EC9D1810C6272B04",
    "5B3B71F9DC6B80D63FDD4A8E9ADB1E6962A69526D43161C1A41D570D7938DAD4A40E329CD0E40E65FFFFFFFFFFFFFFFF",
);

/// ffdhe8192's prime p (RFC 7919 Appendix A), 8192 bits, big-endian hexadecimal.
const P8192: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695A9E13641146433FBCC939DCE249B3EF9",
    "7D2FE363630C75D8F681B202AEC4617AD3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797ABC0AB182B324FB61D108A94BB2C8E3FB",
    "B96ADAB760D7F4681D4F42A3DE394DF4AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005C58EF1837D1683B2C6F34A26C1B2EFFA",
    "886B4238611FCFDCDE355B3B6519035BBC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C",
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF5CAE82AB9C9DF69EE86D2BC522363A0D",
    "ABC521979B0DEADA1DBF9A42D5C4484E0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB",
    "7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A7135C886EFB4318AED6A1E012D9E6832",
    "A907600A918130C46DC778F971AD0038092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF",
    "8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E0DD9020BFD64B645036C7A4E677D2C38532A3A23BA4442CAF53EA6",
    "3BB454329B7624C8917BDD64B1C0FD4CB38E8C334C701C3ACDAD0657FCCFEC719B1F5C3E4E46041F388147FB4CFDB477",
    "A52471F7A9A96910B855322EDB6340D8A00EF092350511E30ABEC1FFF9E3A26E7FB29F8C183023C3587E38DA0077D9B4",
    "763E4E4B94B2BBC194C6651E77CAF992EEAAC0232A281BF6B3A739C1226116820AE8DB5847A67CBEF9C9091B462D538C",
    "D72B03746AE77F5E62292C311562A846505DC82DB854338AE49F5235C95B91178CCF2DD5CACEF403EC9D1810C6272B04",
    "5B3B71F9DC6B80D63FDD4A8E9ADB1E6962A69526D43161C1A41D570D7938DAD4A40E329CCFF46AAA36AD004CF600C838",
    "1E425A31D951AE64FDB23FCEC9509D43687FEB69EDD1CC5E0B8CC3BDF64B10EF86B63142A3AB8829555B2F747C932665",
    "CB2C0F1CC01BD70229388839D2AF05E454504AC78B7582822846C0BA35C35F5C59160CC046FD8251541FC68C9C86B022",
    "BB7099876A460E7451A8A93109703FEE1C217E6C3826E52C51AA691E0E423CFC99E9E31650C1217B624816CDAD9A95F9",
    "D5B8019488D9C0A0A1FE3075A577E23183F81D4A3F2FA4571EFC8CE0BA8A4FE8B6855DFE72B0A66EDED2FBABFBE58A30",
    "FAFABE1C5D71A87E2F741EF8C1FE86FEA6BBFDE530677F0D97D11D49F7A8443D0822E506A9F4614E011E2A94838FF88C",
    "D68C8BB7C5C6424CFFFFFFFFFFFFFFFF",
);

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// RFC 7919's primes share their shape: the top and bottom 64 bits set, and the bits after the top 64
    /// from e (ADF85458A2BB4A9A...), as the definition gives them.
    #[test]
    fn the_primes_have_rfc_7919s_shape() {
        for g in &GROUPS {
            assert_eq!(g.prime_hex.len(), 2 * g.len, "{}", g.name);
            assert!(g.prime_hex.starts_with("FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1"), "{}", g.name);
            assert!(g.prime_hex.ends_with("FFFFFFFFFFFFFFFF"), "{}", g.name);
            assert_eq!(g.name, format!("ffdhe{}", g.len * 8));
            assert_eq!(group(g.id).map(|x| x.name), Some(g.name));
            assert_eq!(group_by_name(g.name).map(|x| x.id), Some(g.id));
        }
        assert!(group(0x00).is_none() && group(0x06).is_none());
    }

    /// Known answers, computed independently (Python's pow over the same primes): g^x with x = 01 02 .. 40h,
    /// and the shared secret with y = 41h .. 80h, given by their SHA-256.
    #[test]
    fn public_values_and_shared_secrets_match_known_answers() {
        let x: Vec<u8> = (1..=64).collect();
        let y: Vec<u8> = (65..=128).collect();
        for (id, gx, z) in [
            (
                0x01,
                "1908b0773912e53f8b481d76c9723f551e22e7edcee9e562bf0cc763a9ce3958",
                "17947c482b7dbb4197a9e9319cba6a569535dbc12000e94f4231ce7c2baf3efd",
            ),
            (
                0x05,
                "b2f1e92b44e0a45ee7b23938bfd9be352a84ab3878fa0afae756e3c4f6999e9e",
                "25ad629a642a3df5cca598f813d01a131635e4ba95d0eaad7f68f9935dc85f99",
            ),
        ] {
            let g = group(id).unwrap();
            let (pub_x, pub_y) = (g.public_value(&x), g.public_value(&y));
            assert_eq!(pub_x.len(), g.len);
            assert_eq!(hex(&sha2::Sha256::digest(&pub_x)), gx, "{}", g.name);
            let z1 = g.shared_secret(&x, &pub_y).unwrap();
            assert_eq!(z1, g.shared_secret(&y, &pub_x).unwrap(), "both sides agree");
            assert_eq!(hex(&sha2::Sha256::digest(&z1)), z, "{}", g.name);
        }
    }

    #[test]
    fn every_group_agrees_on_a_shared_secret() {
        for g in &GROUPS {
            let (x, y) = ([0x5Au8; PRIVATE_LEN], [0xC3u8; PRIVATE_LEN]);
            let (px, py) = (g.public_value(&x), g.public_value(&y));
            assert_ne!(px, py);
            let z = g.shared_secret(&x, &py).unwrap();
            assert_eq!(z.len(), g.len);
            assert_eq!(z, g.shared_secret(&y, &px).unwrap(), "{}", g.name);
            // A value written without its leading zeros is the same value.
            let trimmed = &py[py.iter().take_while(|&&b| b == 0).count()..];
            assert_eq!(g.shared_secret(&x, trimmed).unwrap(), z);
        }
    }

    #[test]
    fn a_peer_value_outside_2_to_p_minus_2_is_refused() {
        let g = group(0x01).unwrap();
        let x = [7u8; PRIVATE_LEN];
        let p: Vec<u8> = (0..g.len).map(|i| u8::from_str_radix(&g.prime_hex[2 * i..2 * i + 2], 16).unwrap()).collect();
        let minus = |k: u8| {
            let mut v = p.clone();
            *v.last_mut().unwrap() -= k; // p ends in FF
            v
        };
        assert_eq!(g.shared_secret(&x, &[]), Err(DhError::Length { got: 0, max: 256 }));
        assert_eq!(g.shared_secret(&x, &[1; 257]), Err(DhError::Length { got: 257, max: 256 }));
        for bad in [vec![0u8], vec![1], vec![0; 256], minus(1), p.clone(), vec![0xFF; 256]] {
            assert_eq!(g.shared_secret(&x, &bad), Err(DhError::Range), "{}", hex(&bad[bad.len() - 2..]));
        }
        for good in [vec![2u8], minus(2)] {
            assert_eq!(g.shared_secret(&x, &good).unwrap().len(), 256);
        }
    }

    /// Ca = HMAC(H(Z), C), checked against Python's hashlib / hmac.
    #[test]
    fn the_augmented_challenge_is_hmac_keyed_with_the_hashed_secret() {
        let z: Vec<u8> = (0..=255).collect();
        assert_eq!(
            hex(&augmented_challenge(HashId::Sha256, &z, &[0xA5; 32])),
            "41085176b00704aa8b023c00dacdc16f0bbbc2f1621cfbeb512ecf6b064b0f5f"
        );
        assert_eq!(
            hex(&augmented_challenge(HashId::Sha512, &z, &[0x3C; 64])),
            "b75ecb86c70944df0ccab4f01e361174fc4386a4907c6e60d245b097a2ac755f\
             cfaaa98823e3d7018f2e1eadfc5084e66c1c2e4d0b37a63187d13716fcbd6f5d"
        );
    }
}
