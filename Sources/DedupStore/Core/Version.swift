/// The version of this dbbackup, written into every manifest.
public enum DedupStoreVersion {
    public static let string = "0.1.0"
}
