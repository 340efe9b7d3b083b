//! One ACME order for one name, with `instant-acme`: the challenge answered through
//! [`super::challenge`], the order polled until ready, a fresh ECDSA P-256 key and CSR,
//! the chain fetched. The challenge is closed whatever the outcome.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use super::Challenge;
use crate::challenge::challenges;

/// How long an order may take, validation included.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);

/// A certificate chain and its key, PEM.
pub struct Issued {
    pub chain: String,
    pub key: String,
}

/// Orders a certificate for `name`.
pub async fn issue(account: &Account, name: &str, challenge: Challenge) -> Result<Issued, String> {
    let mut opened = Vec::new();
    let result = tokio::time::timeout(ORDER_TIMEOUT, order(account, name, challenge, &mut opened))
        .await
        .unwrap_or_else(|_| Err(format!("no certificate within {ORDER_TIMEOUT:?}")));
    for token in opened {
        match challenge {
            Challenge::Http01 => challenges().close_http(&token),
            Challenge::TlsAlpn01 => challenges().close_alpn(&token),
        }
    }
    result
}

async fn order(
    account: &Account,
    name: &str,
    challenge: Challenge,
    opened: &mut Vec<String>,
) -> Result<Issued, String> {
    let ids = [Identifier::Dns(name.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let kind = match challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => return Err(format!("authorization is {other:?}")),
        }
        let mut ch = authz
            .challenge(kind.clone())
            .ok_or_else(|| format!("the server offers no {kind:?} challenge"))?;
        let key_authorization = ch.key_authorization();
        match challenge {
            Challenge::Http01 => {
                challenges().open_http(&ch.token, key_authorization.as_str());
                opened.push(ch.token.clone());
            }
            Challenge::TlsAlpn01 => {
                challenges().open_alpn(name, key_authorization.digest().as_ref())?;
                opened.push(name.to_string());
            }
        }
        ch.set_ready()
            .await
            .map_err(|e| format!("challenge ready: {e}"))?;
    }
    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(ORDER_TIMEOUT);
    let status = order
        .poll_ready(&polling)
        .await
        .map_err(|e| format!("validation: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!("validation failed: the order is {status:?}"));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("CSR: {e}"))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&polling)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    Ok(Issued {
        chain,
        key: key.serialize_pem(),
    })
}
