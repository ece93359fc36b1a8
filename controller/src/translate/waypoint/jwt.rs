//! RequestAuthentication: its validation and the JWT rules the waypoint checks requests
//! against. Which RequestAuthentications attach to a service is `service_config`'s decision.

use ambit_shared::proto::waypoint as pb;

use crate::model::RequestAuthentication;
use crate::rejection::Rejection;

pub fn validate_request_authentication(label: &str, ra: &RequestAuthentication) -> Result<(), Rejection> {
    let ns = ra.metadata.namespace.as_deref().unwrap_or("default");
    crate::translate::authz::validate_target_refs(label, ns, ra.spec.target_ref.as_ref(), &ra.spec.target_refs)?;
    for (i, rule) in ra.spec.jwt_rules.iter().enumerate() {
        let at = |f: &str| format!("spec.jwtRules[{i}].{f}");
        if rule.issuer.is_empty() {
            return Err(Rejection::new(label, at("issuer"), "required"));
        }
        match (&rule.jwks, &rule.jwks_uri) {
            (Some(jwks), _) => {
                let parsed: Result<jsonwebtoken::jwk::JwkSet, _> = serde_json::from_str(jwks);
                if let Err(e) = parsed {
                    return Err(Rejection::new(label, at("jwks"), format!("not a JSON Web Key Set: {e}")));
                }
            }
            (None, Some(uri)) if uri.starts_with("http://") || uri.starts_with("https://") => {}
            (None, Some(uri)) => {
                return Err(Rejection::new(label, at("jwksUri"), format!("{uri:?} is not an http(s) URI")))
            }
            (None, None) => return Err(Rejection::new(label, at("jwks"), "jwks or jwksUri is required")),
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                return Err(Rejection::new(
                    label,
                    at(&format!("fromHeaders[{j}].name")),
                    format!("{:?} is not a header name", h.name),
                ));
            }
        }
        for (j, o) in rule.output_claim_to_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(o.header.as_bytes()).is_err() {
                return Err(Rejection::new(
                    label,
                    at(&format!("outputClaimToHeaders[{j}].header")),
                    format!("{:?} is not a header name", o.header),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn jwt_rules(ra: &RequestAuthentication) -> impl Iterator<Item = pb::JwtRule> + '_ {
    let source = format!("{}/{}", ra.metadata.namespace.as_deref().unwrap_or_default(), ra.metadata.name);
    ra.spec.jwt_rules.iter().map(move |r| {
        let mut locations: Vec<pb::JwtLocation> = r
            .from_headers
            .iter()
            .map(|h| pb::JwtLocation {
                header: h.name.to_ascii_lowercase(),
                prefix: h.prefix.clone().unwrap_or_default(),
                param: String::new(),
            })
            .collect();
        locations.extend(r.from_params.iter().map(|p| pb::JwtLocation { param: p.clone(), ..Default::default() }));
        pb::JwtRule {
            source: source.clone(),
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            jwks: r.jwks.clone().unwrap_or_default(),
            jwks_uri: r.jwks_uri.clone().unwrap_or_default(),
            locations,
            output_claim_to_headers: r
                .output_claim_to_headers
                .iter()
                .map(|o| pb::ClaimToHeader { header: o.header.to_ascii_lowercase(), claim: o.claim.clone() })
                .collect(),
            forward_original_token: r.forward_original_token,
        }
    })
}
