using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using DotQuant.Runtime;
using Orleans.Connections.Security;

namespace DotQuant.Cluster;

/// <summary>TLS between every member of a cluster (Microsoft.Orleans.Connections.Security): each member
/// presents the cluster's certificate (a PKCS#12 file with its private key) and accepts a peer that
/// presents the same certificate or one that chains to a trusted root — mutual TLS, so a process without
/// the certificate can neither join nor call a worker.</summary>
public sealed class ClusterSecurity
{
    ClusterSecurity(X509Certificate2 certificate) => Certificate = certificate;

    public X509Certificate2 Certificate { get; }

    public static ClusterSecurity? Load(string? path, string? password)
    {
        if (path is null) return null;
        if (!File.Exists(path)) throw new DotQuantException(ErrorCodes.FileNotFound, $"TLS certificate not found: {path}", path);
        X509Certificate2 cert;
        try
        {
            cert = X509CertificateLoader.LoadPkcs12FromFile(path, password, X509KeyStorageFlags.Exportable);
        }
        catch (CryptographicException e)
        {
            throw new DotQuantException(ErrorCodes.ClusterAddress, $"{path} is not a PKCS#12 certificate with its private key, or the password is wrong ({e.Message})", path);
        }
        if (!cert.HasPrivateKey)
            throw new DotQuantException(ErrorCodes.ClusterAddress, $"{path} has no private key: every member presents the certificate, so it needs one", path);
        return new ClusterSecurity(cert);
    }

    public void Configure(TlsOptions o)
    {
        o.LocalCertificate = Certificate;
        o.RemoteCertificateMode = RemoteCertificateMode.RequireCertificate;
        o.ClientCertificateMode = RemoteCertificateMode.RequireCertificate;
        o.RemoteCertificateValidation = (remote, _, errors) =>
            errors == System.Net.Security.SslPolicyErrors.None || remote.Thumbprint == Certificate.Thumbprint;
    }
}
