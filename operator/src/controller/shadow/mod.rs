//! The ShadowDeployment controller.

pub mod observe;
