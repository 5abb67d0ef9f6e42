// Mutual TLS for tandem's gRPC links: a private certificate authority and one
// certificate per host, kept as PEM files in one directory, and the gRPC
// credentials built from them.
//
// A TLS directory holds:
//   ca.pem   the CA certificate every peer trusts (the only file all hosts share)
//   ca.key   the CA's private key (needed only where certificates are issued)
//   tls.pem  this host's certificate, signed by the CA; it names the host's DNS
//            names and IP addresses and serves both as server and as client
//            certificate (extendedKeyUsage serverAuth + clientAuth)
//   tls.key  this host's private key
// Keys are EC P-256, written 0600. A peer is accepted only if it presents a
// certificate signed by the same CA: servers require and verify client
// certificates, clients verify the server's certificate and its name.
//
// Functions are thread-safe. CreateCertificates also serializes with other
// processes creating certificates in the same directory (a lock file there).
#ifndef TANDEM_TRANSPORT_TLS_H_
#define TANDEM_TRANSPORT_TLS_H_

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tandem {

inline constexpr char kTlsCaCertFile[] = "ca.pem";
inline constexpr char kTlsCaKeyFile[] = "ca.key";
inline constexpr char kTlsCertFile[] = "tls.pem";
inline constexpr char kTlsKeyFile[] = "tls.key";

// Makes the TLS material in `dir` (created 0700 if missing) for a host reached
// as `hosts` (DNS names such as "localhost", IPv4 or IPv6 addresses such as
// "127.0.0.1"). Idempotent, and never overwrites a file:
//   - empty directory: creates the CA (ca.pem, ca.key) and the host's
//     certificate (tls.pem, tls.key);
//   - ca.pem and ca.key only (a CA copied from another host): issues the host's
//     certificate from that CA;
//   - ca.pem, tls.pem and tls.key (ca.key optional): checks that tls.pem is
//     signed by ca.pem, matches tls.key and names every host, and changes
//     nothing. FailedPrecondition naming the uncovered hosts otherwise (delete
//     tls.pem and tls.key to reissue).
// Any other combination is a partial set: FailedPrecondition listing which
// files are present and which are missing. InvalidArgument for an empty
// `hosts` or a host that is neither an IP address nor a DNS name.
absl::Status CreateCertificates(const std::string& dir, const std::vector<std::string>& hosts);

// Credentials for a gRPC server that presents tls.pem and accepts only clients
// presenting a certificate signed by ca.pem
// (GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY). NotFound naming
// the missing file; InvalidArgument naming a file that does not parse, a key
// that does not match tls.pem, or a tls.pem that ca.pem does not verify (for
// example expired).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const std::string& dir);

// Credentials for a gRPC channel that trusts only servers whose certificate
// ca.pem signed and presents tls.pem as client certificate. Errors as for
// ServerCredentials.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const std::string& dir);

// Makes a server of `builder` fail to start on a port that another socket
// holds. gRPC sets SO_REUSEPORT by default, so a second server on the same
// port would start and split the connections with the first. Every tandem
// server calls this.
void ListenExclusively(grpc::ServerBuilder& builder);

}  // namespace tandem

#endif  // TANDEM_TRANSPORT_TLS_H_
