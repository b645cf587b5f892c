//! Domain types ↔ each transport's generated `Info` messages, and the two
//! shapes `Info` takes on our side ([`InfoReply`], what a plugin answers;
//! [`InfoFromPeer`], what the core reads). The two codegens produce different
//! Rust types for the same proto, hence one module per transport.

use crate::{Capabilities, DeviceRole, InitDataBinding, PluginInfo, RegisterMapping, Transport};

/// What `Info` answers, before it is put into either transport's message.
pub(crate) struct InfoReply<'a> {
    pub info: &'a PluginInfo,
    pub versions: &'a [u32],
    /// 0 when there is no common version: the core refuses with both lists.
    pub selected: u32,
    pub transport: Transport,
}

/// `Info` as the core reads it, before negotiation.
pub(crate) struct InfoFromPeer {
    pub info: PluginInfo,
    pub versions: Vec<u32>,
    pub transport: String,
}

fn hash_or_none(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[cfg(feature = "ttrpc")]
pub(crate) mod ttrpc {
    use super::*;
    use attestd_proto::ttrpc::attester as pb;

    pub(crate) fn info_to_pb(r: &InfoReply<'_>) -> pb::InfoResponse {
        let c = &r.info.capabilities;
        pb::InfoResponse {
            protocol_versions: r.versions.to_vec(),
            selected_version: r.selected,
            name: r.info.name.clone(),
            version: r.info.version.clone(),
            tee: r.info.tee.clone(),
            evidence_format: r.info.evidence_format.clone(),
            transport: r.transport.to_string(),
            capabilities: Some(pb::Capabilities {
                max_report_data: c.max_report_data,
                runtime_measurement: c.runtime_measurement,
                measurement_hash: c.measurement_hash.clone().unwrap_or_default(),
                register_map: c
                    .register_map
                    .iter()
                    .map(|m| pb::RegisterMapping {
                        pcr: m.pcr,
                        register: m.register,
                        ..Default::default()
                    })
                    .collect(),
                register_read: c.register_read,
                init_data: match c.init_data {
                    InitDataBinding::None => pb::InitDataBinding::INIT_DATA_NONE,
                    InitDataBinding::Compare => pb::InitDataBinding::INIT_DATA_COMPARE,
                    InitDataBinding::Extend => pb::InitDataBinding::INIT_DATA_EXTEND,
                }
                .into(),
                role: match c.role {
                    DeviceRole::Primary => pb::DeviceRole::DEVICE_PRIMARY,
                    DeviceRole::Additional => pb::DeviceRole::DEVICE_ADDITIONAL,
                }
                .into(),
                default_register: c.default_register,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }

    pub(crate) fn info_from_pb(r: pb::InfoResponse) -> InfoFromPeer {
        let c = r.capabilities.into_option().unwrap_or_default();
        let capabilities = Capabilities {
            max_report_data: c.max_report_data,
            runtime_measurement: c.runtime_measurement,
            measurement_hash: hash_or_none(c.measurement_hash),
            register_map: c
                .register_map
                .iter()
                .map(|m| RegisterMapping {
                    pcr: m.pcr,
                    register: m.register,
                })
                .collect(),
            register_read: c.register_read,
            // Unknown enum values from a newer plugin degrade to "not offered".
            init_data: match c.init_data.enum_value() {
                Ok(pb::InitDataBinding::INIT_DATA_COMPARE) => InitDataBinding::Compare,
                Ok(pb::InitDataBinding::INIT_DATA_EXTEND) => InitDataBinding::Extend,
                _ => InitDataBinding::None,
            },
            role: match c.role.enum_value() {
                Ok(pb::DeviceRole::DEVICE_ADDITIONAL) => DeviceRole::Additional,
                _ => DeviceRole::Primary,
            },
            default_register: c.default_register,
        };
        InfoFromPeer {
            info: PluginInfo {
                name: r.name,
                version: r.version,
                tee: r.tee,
                evidence_format: r.evidence_format,
                capabilities,
            },
            versions: r.protocol_versions,
            transport: r.transport,
        }
    }
}

#[cfg(feature = "grpc")]
pub(crate) mod grpc {
    use super::*;
    use attestd_proto::grpc::attester as pb;

    pub(crate) fn info_to_pb(r: &InfoReply<'_>) -> pb::InfoResponse {
        let c = &r.info.capabilities;
        pb::InfoResponse {
            protocol_versions: r.versions.to_vec(),
            selected_version: r.selected,
            name: r.info.name.clone(),
            version: r.info.version.clone(),
            tee: r.info.tee.clone(),
            evidence_format: r.info.evidence_format.clone(),
            transport: r.transport.to_string(),
            capabilities: Some(pb::Capabilities {
                max_report_data: c.max_report_data,
                runtime_measurement: c.runtime_measurement,
                measurement_hash: c.measurement_hash.clone().unwrap_or_default(),
                register_map: c
                    .register_map
                    .iter()
                    .map(|m| pb::RegisterMapping {
                        pcr: m.pcr,
                        register: m.register,
                    })
                    .collect(),
                register_read: c.register_read,
                init_data: match c.init_data {
                    InitDataBinding::None => pb::InitDataBinding::InitDataNone,
                    InitDataBinding::Compare => pb::InitDataBinding::InitDataCompare,
                    InitDataBinding::Extend => pb::InitDataBinding::InitDataExtend,
                } as i32,
                role: match c.role {
                    DeviceRole::Primary => pb::DeviceRole::DevicePrimary,
                    DeviceRole::Additional => pb::DeviceRole::DeviceAdditional,
                } as i32,
                default_register: c.default_register,
            }),
        }
    }

    pub(crate) fn info_from_pb(r: pb::InfoResponse) -> InfoFromPeer {
        let c = r.capabilities.unwrap_or_default();
        let capabilities = Capabilities {
            max_report_data: c.max_report_data,
            runtime_measurement: c.runtime_measurement,
            measurement_hash: hash_or_none(c.measurement_hash.clone()),
            register_map: c
                .register_map
                .iter()
                .map(|m| RegisterMapping {
                    pcr: m.pcr,
                    register: m.register,
                })
                .collect(),
            register_read: c.register_read,
            init_data: match c.init_data() {
                pb::InitDataBinding::InitDataCompare => InitDataBinding::Compare,
                pb::InitDataBinding::InitDataExtend => InitDataBinding::Extend,
                pb::InitDataBinding::InitDataNone => InitDataBinding::None,
            },
            role: match c.role() {
                pb::DeviceRole::DeviceAdditional => DeviceRole::Additional,
                pb::DeviceRole::DevicePrimary => DeviceRole::Primary,
            },
            default_register: c.default_register,
        };
        InfoFromPeer {
            info: PluginInfo {
                name: r.name,
                version: r.version,
                tee: r.tee,
                evidence_format: r.evidence_format,
                capabilities,
            },
            versions: r.protocol_versions,
            transport: r.transport,
        }
    }
}
