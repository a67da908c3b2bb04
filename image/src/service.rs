pub struct Image;
pub struct ImageService;
pub struct ImageServiceConfig;
pub struct FsUsage;
